#!/bin/sh
# Fetches Debian's source of cJSON -- the version of the installed libcjson1
# when the archive still has it, else the archive's newest -- and unpacks it
# with Debian's patches into DIR/cjson (cJSON.c, cJSON.h, debian/changelog).
# Usage: cjson_source.sh DIR
#
# Only Debian's package archive is used, through apt: a private apt state in
# DIR/apt whose sources are the deb-src twins of the machine's Debian entries,
# so the machine's apt configuration is left as it is and root is not needed.
set -eu
mkdir -p "$1"
dir=$(cd "$1" && pwd)   # apt takes relative paths as relative to /etc/apt
apt=$dir/apt
rm -rf "$apt" "$dir/src" "$dir/cjson"
mkdir -p "$apt/sources.list.d" "$apt/lists/partial" "$apt/cache/archives/partial" "$dir/src"

# deb822 stanzas (*.sources) and one-line entries (*.list) that name a Debian
# archive, turned into their deb-src twins.
for f in /etc/apt/sources.list.d/*.sources; do
  [ -e "$f" ] || continue
  awk 'BEGIN { RS = ""; ORS = "\n\n" }
       /(^|\n)Types:[^\n]*deb/ && /(^|\n)URIs:[^\n]*debian/ {
         sub(/(^|\n)Types:[^\n]*/, "\nTypes: deb-src"); print }' "$f" \
    > "$apt/sources.list.d/$(basename "$f")"
done
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
  [ -e "$f" ] || continue
  sed -n 's/^[[:space:]]*deb[[:space:]]\(.*debian.*\)/deb-src \1/p' "$f" \
    > "$apt/sources.list.d/$(basename "$f" | tr . _).list"
done

aptget() {
  apt-get -q -o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts="$apt/sources.list.d" \
    -o Dir::State::Lists="$apt/lists" -o Dir::Cache="$apt/cache" "$@"
}
aptget update >"$apt/update.log" 2>&1 || { cat "$apt/update.log" >&2; exit 1; }

version=$(dpkg-query -W -f='${Version}' libcjson1 2>/dev/null || true)
cd "$dir/src"
if [ -z "$version" ] || ! aptget source "cjson=$version" >"$apt/source.log" 2>&1; then
  aptget source cjson >"$apt/source.log" 2>&1 || { cat "$apt/source.log" >&2; exit 1; }
fi
cd - >/dev/null
src=$(ls -d "$dir"/src/cjson-*/ | head -n 1)
mv "$src" "$dir/cjson"
rm -rf "$dir/src" "$apt"
echo "cJSON source: Debian $(dpkg-parsechangelog -l "$dir/cjson/debian/changelog" -S Version) in $dir/cjson"
