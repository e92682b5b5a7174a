package main

import (
	"strings"
	"unicode"

	"golang.org/x/text/width"
)

// runeWidth is the number of terminal columns r takes: 2 for East Asian Wide and
// Fullwidth characters (CJK, kana, Hangul syllables, fullwidth forms, emoji drawn as
// pictures: Unicode's EastAsianWidth W and F, from golang.org/x/text/width, kept
// current with Unicode by the Go team), 0 for combining marks and other characters that
// print nothing of their own, 1 otherwise.
func runeWidth(r rune) int {
	switch {
	case r < 0x300:
		return 1 // ASCII and Latin: the controls are escaped before (termSafe)
	case unicode.In(r, unicode.Mn, unicode.Me, unicode.Cf), r >= 0x1160 && r <= 0x11ff:
		return 0 // combining marks, format characters, Hangul vowels and finals
	}
	switch width.LookupRune(r).Kind() {
	case width.EastAsianWide, width.EastAsianFullwidth:
		return 2
	}
	return 1
}

// displayWidth is the number of terminal columns s takes on one line.
func displayWidth(s string) int {
	n := 0
	for _, r := range s {
		n += runeWidth(r)
	}
	return n
}

// fitLines cuts every line of text to width columns, the last one a "…" where it cut.
func fitLines(text string, width int) string {
	lines := strings.Split(text, "\n")
	for i, l := range lines {
		lines[i] = fitWidth(l, width)
	}
	return strings.Join(lines, "\n")
}

// fitWidth is s cut to width columns, ending in "…" where it cut; a combining mark stays
// with the character it marks.
func fitWidth(s string, width int) string {
	if displayWidth(s) <= width {
		return s
	}
	used := 0
	for i, r := range s {
		w := runeWidth(r)
		if used+w > width-1 {
			return s[:i] + "…"
		}
		used += w
	}
	return s
}

// wrapWidth breaks s into lines of at most width columns, at spaces where it can; a word
// wider than a line is broken where the line ends.
func wrapWidth(s string, width int) []string {
	var lines []string
	line, used := "", 0
	for _, word := range strings.Fields(s) {
		w := displayWidth(word)
		if used > 0 && used+1+w <= width {
			line, used = line+" "+word, used+1+w
			continue
		}
		if used > 0 {
			lines = append(lines, line)
		}
		line, used = "", 0
		for _, r := range word {
			rw := runeWidth(r)
			if used+rw > width && used > 0 {
				lines = append(lines, line)
				line, used = "", 0
			}
			line, used = line+string(r), used+rw
		}
	}
	if used > 0 || len(lines) == 0 {
		lines = append(lines, line)
	}
	return lines
}
