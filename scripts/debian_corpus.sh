#!/usr/bin/env bash
# Writes Debian's English package descriptions (the Translation-en lists of
# apt, decompressed and concatenated) to one plain-text file, the corpus of
# examples/debian_search and bench/xapian_bm25.
# Usage: scripts/debian_corpus.sh [OUT]   (default: debian-translation-en.txt)
# Runs `apt-get update -o Acquire::Languages=en` first when no list is there.
set -euo pipefail
out=${1:-debian-translation-en.txt}
lists=(/var/lib/apt/lists/*_main_i18n_Translation-en*)
if [ ! -e "${lists[0]}" ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -o Acquire::Languages=en -qq
  lists=(/var/lib/apt/lists/*_main_i18n_Translation-en*)
fi
[ -e "${lists[0]}" ] || { echo "no Translation-en list under /var/lib/apt/lists" >&2; exit 1; }
tmp=$(mktemp "${out}.XXXXXX")
trap 'rm -f "$tmp"' EXIT
for f in "${lists[@]}"; do
  # apt-helper decompresses whatever compression apt stored the list with
  /usr/lib/apt/apt-helper cat-file "$f" >> "$tmp"
  printf '\n' >> "$tmp"
done
mv "$tmp" "$out"
trap - EXIT
echo "$out: $(grep -c '^Package: ' "$out") descriptions" >&2
