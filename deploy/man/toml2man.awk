# asyncd.toml(5) from deploy/asyncd.toml.example: the comments before the
# first [section] are the description; each key becomes a tagged paragraph
# (name = default) with the comments above it; each [section] a subsection,
# and so is a commented-out [[table]], shown as an example.
#   awk -v version=0.1.0 -f toml2man.awk asyncd.toml.example > asyncd.toml.5
function esc(s) {
  gsub(/\\/, "\\e", s)
  sub(/^[.']/, "\\\\&&", s)  # a leading . or ' would be a roff request
  return s
}
function flush(   i) {
  for (i = 1; i <= n; i++) print text[i]
  n = 0
}
BEGIN {
  print ".TH ASYNCD.TOML 5 \"\" \"asyncd " version "\" \"File Formats\""
  print ".SH NAME"
  print "asyncd.toml \\- configuration file of the asyncd daemon"
  print ".SH SYNOPSIS"
  print ".I /etc/asyncd/asyncd.toml"
  print ".SH DESCRIPTION"
  n = 0
  in_header = 1
}
/^#/ {
  line = $0
  sub(/^# ?/, "", line)
  if (in_example) { print esc(line); next }
  # A commented-out table ("# [[share]]"): a subsection, the comments above
  # it as its description, the rest of the block as a literal example.
  if (!in_header && line ~ /^\[\[[a-z_]+\]\]$/) {
    print ".SS " esc(line)
    flush()
    print ".PP"
    print "For example:"
    print ".PP"
    print ".nf"
    print esc(line)
    in_example = 1
    next
  }
  if (in_header && line == "") { text[++n] = ".PP"; next }
  text[++n] = esc(line)
  next
}
/^[[:space:]]*$/ {
  if (in_example) { print ".fi"; in_example = 0 }
  if (in_header) { flush(); print ".PP" } else n = 0
  next
}
/^\[/ {
  if (in_header) { flush(); print ".SH KEYS"; in_header = 0 }
  n = 0
  print ".SS " esc($0)
  next
}
/=/ {
  key = $0; sub(/[[:space:]]*=.*/, "", key)
  value = $0; sub(/^[^=]*=[[:space:]]*/, "", value)
  print ".TP"
  print "\\fB" esc(key) "\\fR = " esc(value)
  flush()
  next
}
END {
  if (in_example) print ".fi"
  print ".SH FILES"
  print ".TP"
  print ".I /etc/asyncd/asyncd.toml"
  print "The file the systemd unit passes to \\fBasyncd \\-\\-config\\fR (a conffile)."
  print ".TP"
  print ".I /usr/share/doc/asyncd/asyncd.toml.example"
  print "The same file as shipped: every key at its default."
  print ".SH SEE ALSO"
  print ".BR asyncd (8),"
  print ".BR asyncctl (1)"
}
