#!/bin/sh
# hpcgear test gear (see README.md): busybox sh + awk only. Reads /flywheel/v0/config.json,
# writes outputs to /flywheel/v0/output, then sleeps and exits as configured.
set -eu

FLYWHEEL=${FLYWHEEL:-/flywheel/v0}
CONFIG=$FLYWHEEL/config.json
OUT=$FLYWHEEL/output
# The file name written when hostile_filename is true (documented in README.md; tests
# compare it byte for byte): spaces, quotes, $(...), a backtick, glob characters, a
# leading dash and non-ASCII letters, but nothing Flywheel forbids in a file name.
HOSTILE='-- $(touch pwned); '"'"'"`*?[x] {a,b} ünï ✓.txt'

say() { printf 'test-gear: %s\n' "$*"; }
die() { printf 'test-gear: error: %s\n' "$*" >&2; exit 1; }

[ -f "$CONFIG" ] || die "$CONFIG does not exist"
[ -d "$OUT" ] || die "$OUT does not exist"
FLAT=$(mktemp /tmp/test-gear-config.XXXXXX)
awk -f "$FLYWHEEL/json_flat.awk" "$CONFIG" > "$FLAT" || die "cannot parse $CONFIG"

# cfg KEY: the value at KEY (e.g. config.num_files); fails if KEY is absent.
cfg() {
    awk -F '\t' -v k="$1" '$1 == k { print substr($0, length(k) + 2); found = 1 }
                           END { exit !found }' "$FLAT"
}
whole() {  # whole NAME VALUE MAX: VALUE must be a whole number <= MAX
    case $2 in '' | *[!0-9]*) die "config $1 must be a whole number, got '$2'" ;; esac
    [ "$2" -le "$3" ] || die "config $1 must be at most $3, got $2"
}

label=$(cfg config.label) || label=out
num_files=$(cfg config.num_files) || num_files=1
file_format=$(cfg config.file_format) || file_format=txt
sleep_seconds=$(cfg config.sleep_seconds) || sleep_seconds=0
scratch_mb=$(cfg config.scratch_mb) || scratch_mb=0
hostile=$(cfg config.hostile_filename) || hostile=false
write_metadata=$(cfg config.write_metadata) || write_metadata=false
exit_code=$(cfg config.exit_code) || exit_code=0
fail_message=$(cfg config.fail_message) || fail_message=""
destination_type=$(cfg destination.type) || destination_type=acquisition

case $label in '' | *[!A-Za-z0-9._-]*) die "config label must match ^[A-Za-z0-9._-]+\$" ;; esac
case $file_format in txt | json) ;; *) die "config file_format must be txt or json" ;; esac
case $sleep_seconds in '' | *[!0-9.eE+-]*) die "config sleep_seconds must be a number >= 0" ;; esac
# JSON may write 1e-05; sleep wants plain decimals.
sleep_seconds=$(awk -v s="$sleep_seconds" 'BEGIN { if (s + 0 < 0) exit 1; printf "%.3f", s + 0 }') ||
    die "config sleep_seconds must be a number >= 0"
whole num_files "$num_files" 1000
whole scratch_mb "$scratch_mb" 102400
whole exit_code "$exit_code" 255

say "label=$label num_files=$num_files format=$file_format sleep=$sleep_seconds" \
    "scratch_mb=$scratch_mb hostile=$hostile exit_code=$exit_code"

cp "$CONFIG" "$OUT/config.json"

i=1
while [ "$i" -le "$num_files" ]; do
    if [ "$file_format" = json ]; then
        printf '{"index": %d, "count": %d, "label": "%s"}\n' "$i" "$num_files" "$label" \
            > "$OUT/$label-$i.json"
    else
        printf 'test-gear file %d of %d\nlabel=%s\n' "$i" "$num_files" "$label" \
            > "$OUT/$label-$i.txt"
    fi
    i=$((i + 1))
done

if grep -q '^config\.tags\.[0-9]*	' "$FLAT"; then
    awk -F '\t' '$1 ~ /^config\.tags\.[0-9]+$/ { print substr($0, index($0, "\t") + 1) }' \
        "$FLAT" > "$OUT/tags.txt"
fi

{
    echo "gear=test-gear"
    echo "uid=$(id -u)"
    echo "pwd=$(pwd)"
    echo "home=${HOME:-}"
    echo "num_files=$num_files"
    if input=$(cfg inputs.input_file.location.path); then
        [ -f "$input" ] || die "input_file $input does not exist"
        echo "input_name=$(cfg inputs.input_file.location.name)"
        echo "input_size=$(wc -c < "$input" | tr -d ' ')"
        echo "input_sha256=$(sha256sum "$input" | cut -d' ' -f1)"
    fi
} > "$OUT/report.txt"
env | LC_ALL=C sort > "$OUT/env.txt"

if [ "$scratch_mb" -gt 0 ]; then
    say "writing $scratch_mb MB to /tmp and to $HOME"
    dd if=/dev/zero of=/tmp/test-gear-scratch.bin bs=1048576 count="$scratch_mb" 2>/dev/null
    dd if=/dev/zero of="$HOME/test-gear-scratch.bin" bs=1048576 count="$scratch_mb" 2>/dev/null
    {
        echo "scratch_tmp_bytes=$(wc -c < /tmp/test-gear-scratch.bin | tr -d ' ')"
        echo "scratch_home_bytes=$(wc -c < "$HOME/test-gear-scratch.bin" | tr -d ' ')"
    } >> "$OUT/report.txt"
fi

if [ "$hostile" = true ]; then
    printf 'a file with a hostile name\n' > "$OUT/$HOSTILE"
fi

if [ "$write_metadata" = true ]; then
    # Flywheel's .metadata.json: per-file type, info and tags for outputs in the destination.
    first=$label-1.$file_format
    {
        printf '{"%s": {"files": [' "$destination_type"
        if [ "$num_files" -gt 0 ]; then
            printf '{"name": "%s", "type": "%s", "info": {"test_gear": {"index": 1, "label": "%s"}}, "tags": ["test-gear"]}' \
                "$first" "$([ "$file_format" = json ] && echo source\ code || echo text)" "$label"
        fi
        printf ']}}\n'
    } > "$OUT/.metadata.json"
fi

rm -f "$FLAT"

if [ "$sleep_seconds" != 0.000 ]; then
    trap 'say "SIGTERM during sleep"; exit 143' TERM
    say "sleeping $sleep_seconds s"
    sleep "$sleep_seconds" &
    wait $!
    trap - TERM
fi

if [ "$exit_code" -ne 0 ]; then
    [ -z "$fail_message" ] || printf '%s\n' "$fail_message" >&2
    say "exiting with status $exit_code as configured"
fi
exit "$exit_code"
