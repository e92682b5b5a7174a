package main

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// termSafe makes a string the server sent safe to print on a terminal. Control characters
// (C0 such as ESC and CR, DEL, C1 such as U+0085 and U+009B), format characters (U+202E
// reverses the text after it), other characters that print nothing and bytes that are not
// UTF-8 are shown escaped as Go quotes them (\x1b, \r, \u009b, \xff); printable text, in
// any script, is kept. A job's id, model or error, or an error message, printed raw could
// otherwise retitle the window, clear the screen or overwrite what was printed before.
func termSafe(s string) string { return escapeUnprintable(s, false) }

// termText is termSafe for text of several lines, such as a model's answer: newlines and
// tabs are kept, carriage returns dropped (so a CRLF line end prints as a line end; alone,
// one would overwrite the line), everything else unprintable is escaped.
func termText(s string) string { return escapeUnprintable(s, true) }

func escapeUnprintable(s string, text bool) string {
	keep := func(r rune) bool { return strconv.IsGraphic(r) || text && (r == '\n' || r == '\t') }
	if utf8.ValidString(s) && !strings.ContainsFunc(s, func(r rune) bool { return !keep(r) }) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case keep(r):
			b.WriteString(s[i : i+n])
		case text && r == '\r':
		default:
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
		}
		i += n
	}
	return b.String()
}

// termSafeAll is termSafe of every string of ss.
func termSafeAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = termSafe(s)
	}
	return out
}

// termJSON makes JSON text safe to print on a terminal (--json output) without changing
// what it stands for. encoding/json escapes C0 controls but writes C1 controls (U+009B
// is CSI to many terminals), DEL, bidi overrides and other characters that print nothing
// as they are; a job's error or result read with --json could then act on the terminal
// that shows it. In JSON such a character can stand only inside a string, where its
// \u escape means the same; a carriage return only between tokens, where it is white
// space and is dropped; a byte that is not UTF-8 becomes \ufffd, as a decoder reads it.
func termJSON(b []byte) []byte {
	keep := func(r rune) bool { return r == '\n' || r == '\t' || strconv.IsGraphic(r) }
	if utf8.Valid(b) && !strings.ContainsFunc(string(b), func(r rune) bool { return !keep(r) }) {
		return b
	}
	out := make([]byte, 0, len(b)+32)
	for i := 0; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			out = append(out, `\ufffd`...)
		case keep(r):
			out = append(out, b[i:i+n]...)
		case r == '\r':
		case r > 0xffff:
			hi, lo := utf16.EncodeRune(r)
			out = fmt.Appendf(out, `\u%04x\u%04x`, hi, lo)
		default:
			out = fmt.Appendf(out, `\u%04x`, r)
		}
		i += n
	}
	return out
}
