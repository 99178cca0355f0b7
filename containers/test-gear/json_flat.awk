# json_flat.awk - flatten a JSON document into "path<TAB>value" lines (busybox awk, POSIX awk).
#
#   awk -f json_flat.awk config.json
#   config.label	out
#   config.tags.0	first
#   inputs.input_file.location.path	/flywheel/v0/input/input_file/a.txt
#
# Only scalars are printed (objects and arrays give the path components; array items are
# numbered from 0). Strings are unescaped; a newline, tab or carriage return inside a
# string is printed as the two characters \n, \t or \r so every value stays on one line.
# null, true, false and numbers are printed as written.

{ doc = doc $0 "\n" }

function hexval(h,    k, v) {
    v = 0
    h = tolower(h)
    for (k = 1; k <= length(h); k++)
        v = v * 16 + index("0123456789abcdef", substr(h, k, 1)) - 1
    return v
}

function utf8(cp) {
    if (cp < 128) return sprintf("%c", cp)
    if (cp < 2048) return sprintf("%c%c", 192 + int(cp / 64), 128 + cp % 64)
    return sprintf("%c%c%c", 224 + int(cp / 4096), 128 + int(cp / 64) % 64, 128 + cp % 64)
}

function parse_string(    out, c) {
    pos++
    out = ""
    while (pos <= len) {
        c = substr(doc, pos, 1)
        if (c == "\"") { pos++; return out }
        if (c == "\\") {
            c = substr(doc, pos + 1, 1)
            pos += 2
            if (c == "n") out = out "\\n"
            else if (c == "t") out = out "\\t"
            else if (c == "r") out = out "\\r"
            else if (c == "b" || c == "f") out = out " "
            else if (c == "u") { out = out utf8(hexval(substr(doc, pos, 4))); pos += 4 }
            else out = out c
            continue
        }
        out = out c
        pos++
    }
    bad = 1
    return out
}

function path(    d, p) {
    p = ""
    for (d = 1; d <= depth; d++)
        p = p (d > 1 ? "." : "") (kind[d] == "o" ? key[d] : idx[d])
    return p
}

function value(v) {
    if (depth == 0) { printf "%s\n", v; return }
    printf "%s\t%s\n", path(), v
}

END {
    len = length(doc)
    pos = 1
    depth = 0
    bad = 0
    while (pos <= len) {
        c = substr(doc, pos, 1)
        if (c == " " || c == "\t" || c == "\n" || c == "\r" || c == ":") { pos++; continue }
        if (c == "{" || c == "[") {
            depth++
            kind[depth] = (c == "{") ? "o" : "a"
            idx[depth] = 0
            haskey[depth] = 0
            pos++
            continue
        }
        if (c == "}" || c == "]") { depth--; pos++; continue }
        if (c == ",") {
            if (kind[depth] == "a") idx[depth]++
            else haskey[depth] = 0
            pos++
            continue
        }
        if (c == "\"") {
            s = parse_string()
            if (kind[depth] == "o" && !haskey[depth]) { key[depth] = s; haskey[depth] = 1 }
            else value(s)
            continue
        }
        start = pos
        while (pos <= len) {
            c = substr(doc, pos, 1)
            if (c == "," || c == "}" || c == "]" || c == " " || c == "\t" || c == "\n" || c == "\r") break
            pos++
        }
        value(substr(doc, start, pos - start))
    }
    if (bad || depth != 0) { print "json_flat.awk: malformed JSON" > "/dev/stderr"; exit 2 }
}
