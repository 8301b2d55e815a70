/*
 * debian_corpus.h - Debian's English package descriptions as a known-item
 * retrieval corpus, shared by examples/debian_search.c and
 * bench/xapian_bm25.cc (header-only, C11 and C++).
 *
 * Input: a Translation-en list in plain text (scripts/debian_corpus.sh writes
 * one from apt's lists): records of "Package: name", "Description-md5: ...",
 * "Description-en: synopsis", then long-description lines that start with a
 * space (" ." is an empty line), records separated by blank lines.
 *
 * Each package with a non-empty synopsis and long description becomes one
 * document (its long description) and one query (its synopsis); the query's
 * only relevant document is its own. Tokens are lowercase ASCII
 * alphanumeric runs; a vocabulary built from the whole corpus (documents and
 * synopses) maps them to ids 0..V-1. Packages whose synopsis and description
 * both repeat an earlier package's are skipped (their query would have two
 * identical answers), and so are later records of a package name already
 * seen (the security and updates lists repeat packages of the main list).
 *
 * Split: a package is held out (test) when FNV-1a(name) % 10 == 0, so the
 * split does not depend on the file's order or on the other packages.
 */
#ifndef DEBIAN_CORPUS_H
#define DEBIAN_CORPUS_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct dc_u32vec {
    uint32_t *v;
    size_t n, cap;
} dc_u32vec;

static int dc_push(dc_u32vec *a, uint32_t x)
{
    if (a->n == a->cap) {
        size_t nc = a->cap ? 2 * a->cap : 1024;
        uint32_t *nv = (uint32_t *)realloc(a->v, nc * sizeof *nv);
        if (!nv) return 0;
        a->v = nv;
        a->cap = nc;
    }
    a->v[a->n++] = x;
    return 1;
}

typedef struct dc_corpus {
    size_t n;              /* packages (= documents = queries) */
    char **names;          /* [n] package names */
    size_t *doc_off;       /* [n + 1] CSR offsets into doc_tok */
    size_t *q_off;         /* [n + 1] CSR offsets into q_tok */
    dc_u32vec doc_tok, q_tok;
    uint8_t *test;         /* [n] 1 = held out */
    /* vocabulary */
    uint32_t vocab;        /* V */
    char **words;          /* [V] */
    uint32_t *df;          /* [V] documents containing the token */
    /* hash table (open addressing, power-of-two size) */
    uint32_t *slots;       /* token id + 1, 0 = empty */
    size_t nslots;
} dc_corpus;

static uint32_t dc_fnv(const char *s, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

static int dc_grow_table(dc_corpus *c)
{
    size_t ns = c->nslots ? 2 * c->nslots : 1 << 16;
    uint32_t *t = (uint32_t *)calloc(ns, sizeof *t);
    if (!t) return 0;
    for (uint32_t id = 0; id < c->vocab; id++) {
        size_t h = dc_fnv(c->words[id], strlen(c->words[id])) & (ns - 1);
        while (t[h]) h = (h + 1) & (ns - 1);
        t[h] = id + 1;
    }
    free(c->slots);
    c->slots = t;
    c->nslots = ns;
    return 1;
}

/* Id of the token w[0..n) (added when absent); UINT32_MAX on memory failure. */
static uint32_t dc_intern(dc_corpus *c, const char *w, size_t n)
{
    if ((c->vocab + 1) * 2 > c->nslots && !dc_grow_table(c)) return UINT32_MAX;
    size_t h = dc_fnv(w, n) & (c->nslots - 1);
    while (c->slots[h]) {
        const char *x = c->words[c->slots[h] - 1];
        if (strlen(x) == n && memcmp(x, w, n) == 0) return c->slots[h] - 1;
        h = (h + 1) & (c->nslots - 1);
    }
    if ((c->vocab & (c->vocab - 1)) == 0 || c->vocab == 0) { /* grow words/df at powers of two */
        size_t nc = c->vocab ? 2 * (size_t)c->vocab : 1024;
        if (nc < 1024) nc = 1024;
        char **nw = (char **)realloc(c->words, nc * sizeof *nw);
        if (!nw) return UINT32_MAX;
        c->words = nw;
        uint32_t *nd = (uint32_t *)realloc(c->df, nc * sizeof *nd);
        if (!nd) return UINT32_MAX;
        c->df = nd;
    }
    char *s = (char *)malloc(n + 1);
    if (!s) return UINT32_MAX;
    memcpy(s, w, n);
    s[n] = 0;
    c->words[c->vocab] = s;
    c->df[c->vocab] = 0;
    c->slots[h] = c->vocab + 1;
    return c->vocab++;
}

/* Looks a token up without adding it; UINT32_MAX when unknown. */
static inline uint32_t dc_lookup(const dc_corpus *c, const char *w, size_t n)
{
    if (!c->nslots) return UINT32_MAX;
    size_t h = dc_fnv(w, n) & (c->nslots - 1);
    while (c->slots[h]) {
        const char *x = c->words[c->slots[h] - 1];
        if (strlen(x) == n && memcmp(x, w, n) == 0) return c->slots[h] - 1;
        h = (h + 1) & (c->nslots - 1);
    }
    return UINT32_MAX;
}

/* Appends the tokens of text[0..n) to out. */
static int dc_tokenise(dc_corpus *c, const char *text, size_t n, dc_u32vec *out)
{
    char buf[256];
    size_t bl = 0;
    for (size_t i = 0; i <= n; i++) {
        unsigned char ch = i < n ? (unsigned char)text[i] : ' ';
        int alnum = (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || (ch >= 'A' && ch <= 'Z');
        if (alnum) {
            if (bl < sizeof buf) buf[bl++] = (char)(ch >= 'A' && ch <= 'Z' ? ch + 32 : ch);
        } else if (bl) {
            uint32_t id = dc_intern(c, buf, bl);
            if (id == UINT32_MAX || !dc_push(out, id)) return 0;
            bl = 0;
        }
    }
    return 1;
}

static void dc_free(dc_corpus *c)
{
    for (size_t i = 0; i < c->n; i++) free(c->names[i]);
    for (uint32_t i = 0; i < c->vocab; i++) free(c->words[i]);
    free(c->names);
    free(c->doc_off);
    free(c->q_off);
    free(c->doc_tok.v);
    free(c->q_tok.v);
    free(c->test);
    free(c->words);
    free(c->df);
    free(c->slots);
    memset(c, 0, sizeof *c);
}

/* Loads the corpus; returns 0 and prints a reason on failure. */
static int dc_load(dc_corpus *c, const char *path)
{
    memset(c, 0, sizeof *c);
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "cannot open %s (run scripts/debian_corpus.sh first)\n", path);
        return 0;
    }
    size_t cap = 0;
    char *line = NULL;
    char name[512] = "";
    dc_u32vec syn = {NULL, 0, 0}, doc = {NULL, 0, 0};
    size_t capn = 0;
    uint32_t *seen = NULL; /* df marks: last package that counted a token */
    size_t seen_cap = 0;
    /* signatures (hash of synopsis + description tokens) of kept packages,
     * an open-addressing set of 2^18 slots (0 = empty) */
    const size_t nsig = (size_t)1 << 18;
    uint32_t *sig = (uint32_t *)calloc(nsig, sizeof *sig);
    if (!sig) {
        fclose(f);
        return 0;
    }
    int in_desc = 0, ok = 1;
    c->doc_off = (size_t *)malloc(sizeof(size_t));
    c->q_off = (size_t *)malloc(sizeof(size_t));
    c->doc_off[0] = c->q_off[0] = 0;
    for (;;) {
        char *l = NULL;
        size_t len = 0;
        int eof = 0;
        {
            size_t n = 0;
            int ch;
            while ((ch = fgetc(f)) != EOF && ch != '\n') {
                if (n + 1 >= cap) {
                    cap = cap ? 2 * cap : 4096;
                    char *nl = (char *)realloc(line, cap);
                    if (!nl) {
                        ok = 0;
                        break;
                    }
                    line = nl;
                }
                line[n++] = (char)ch;
            }
            if (!ok) break;
            if (ch == EOF && n == 0) eof = 1;
            if (line) line[n] = 0;
            l = line;
            len = n;
        }
        int blank = eof || len == 0;
        if (!blank && strncmp(l, "Package: ", 9) == 0) {
            size_t nl = len - 9 < sizeof name - 1 ? len - 9 : sizeof name - 1;
            memcpy(name, l + 9, nl);
            name[nl] = 0;
            in_desc = 0;
        } else if (!blank && strncmp(l, "Description-en: ", 16) == 0) {
            syn.n = doc.n = 0;
            if (!dc_tokenise(c, l + 16, len - 16, &syn)) ok = 0;
            in_desc = 1;
        } else if (!blank && l[0] == ' ' && in_desc) {
            if (!(len == 2 && l[1] == '.') && !dc_tokenise(c, l + 1, len - 1, &doc)) ok = 0;
        } else if (blank) {
            if (in_desc && syn.n && doc.n && name[0]) {
                /* skip exact duplicates of an earlier package's text */
                uint32_t h = 2166136261u;
                for (size_t i = 0; i < syn.n; i++) h = (h ^ syn.v[i]) * 16777619u;
                h = (h ^ 0xFFFFFFFFu) * 16777619u;
                for (size_t i = 0; i < doc.n; i++) h = (h ^ doc.v[i]) * 16777619u;
                h = (h & 0x7FFFFFFFu) | 1u;
                uint32_t hn = dc_fnv(name, strlen(name)) | 0x80000000u;
                size_t at = h & (nsig - 1), an = hn & (nsig - 1);
                while (sig[at] && sig[at] != h) at = (at + 1) & (nsig - 1);
                while (sig[an] && sig[an] != hn) an = (an + 1) & (nsig - 1);
                int dup = sig[at] == h || sig[an] == hn || c->n >= nsig / 4;
                if (!dup) {
                    sig[at] = h;
                    sig[an] = hn;
                    if (c->n == capn) {
                        capn = capn ? 2 * capn : 4096;
                        char **nn = (char **)realloc(c->names, capn * sizeof *nn);
                        size_t *d1 = (size_t *)realloc(c->doc_off, (capn + 1) * sizeof *d1);
                        size_t *q1 = (size_t *)realloc(c->q_off, (capn + 1) * sizeof *q1);
                        if (nn) c->names = nn;
                        if (d1) c->doc_off = d1;
                        if (q1) c->q_off = q1;
                        if (!nn || !d1 || !q1) {
                            ok = 0;
                            break;
                        }
                    }
                    c->names[c->n] = strdup(name);
                    for (size_t i = 0; i < doc.n; i++) ok &= dc_push(&c->doc_tok, doc.v[i]);
                    for (size_t i = 0; i < syn.n; i++) ok &= dc_push(&c->q_tok, syn.v[i]);
                    c->n++;
                    c->doc_off[c->n] = c->doc_tok.n;
                    c->q_off[c->n] = c->q_tok.n;
                }
            }
            in_desc = 0;
            name[0] = 0;
            if (eof) break;
        }
        if (!ok) break;
    }
    fclose(f);
    free(line);
    free(syn.v);
    free(doc.v);
    free(sig);
    if (!ok) {
        fprintf(stderr, "out of memory reading %s\n", path);
        free(seen);
        dc_free(c);
        return 0;
    }
    /* document frequencies over the long descriptions */
    seen_cap = c->vocab;
    seen = (uint32_t *)calloc(seen_cap ? seen_cap : 1, sizeof *seen);
    c->test = (uint8_t *)calloc(c->n ? c->n : 1, 1);
    if (!seen || !c->test) {
        free(seen);
        dc_free(c);
        return 0;
    }
    for (uint32_t t = 0; t < c->vocab; t++) c->df[t] = 0;
    for (size_t d = 0; d < c->n; d++) {
        for (size_t i = c->doc_off[d]; i < c->doc_off[d + 1]; i++) {
            uint32_t t = c->doc_tok.v[i];
            if (seen[t] != d + 1) {
                seen[t] = (uint32_t)(d + 1);
                c->df[t]++;
            }
        }
        c->test[d] = dc_fnv(c->names[d], strlen(c->names[d])) % 10 == 0;
    }
    free(seen);
    return 1;
}

#endif /* DEBIAN_CORPUS_H */
