package main

import (
	"sort"
	"strings"
	"unicode"
)

// runeWidth is the number of terminal columns r takes: 2 for East Asian Wide and
// Fullwidth characters (CJK, kana, Hangul syllables, fullwidth forms) and for emoji drawn
// as pictures, 0 for combining marks and other characters that print nothing of their
// own, 1 otherwise. A small table of Unicode's EastAsianWidth W and F ranges, not a
// module: the live view needs this one number. Where the table errs it errs wide (a few
// symbols of the emoji blocks that terminals draw narrow): a line is then cut a column
// early, never wrapped.
func runeWidth(r rune) int {
	switch {
	case r < 0x300:
		return 1 // ASCII and Latin: the controls are escaped before (termSafe)
	case unicode.In(r, unicode.Mn, unicode.Me, unicode.Cf), r >= 0x1160 && r <= 0x11ff:
		return 0 // combining marks, format characters, Hangul vowels and finals
	}
	i := sort.Search(len(wideRanges), func(i int) bool { return wideRanges[i][1] >= r })
	if i < len(wideRanges) && wideRanges[i][0] <= r {
		return 2
	}
	return 1
}

// wideRanges are the characters two columns wide, in order (UAX #11 W and F).
var wideRanges = [][2]rune{
	{0x1100, 0x115f}, {0x231a, 0x231b}, {0x2329, 0x232a}, {0x23e9, 0x23ec}, {0x23f0, 0x23f0},
	{0x23f3, 0x23f3}, {0x25fd, 0x25fe}, {0x2614, 0x2615}, {0x2648, 0x2653}, {0x267f, 0x267f},
	{0x2693, 0x2693}, {0x26a1, 0x26a1}, {0x26aa, 0x26ab}, {0x26bd, 0x26be}, {0x26c4, 0x26c5},
	{0x26ce, 0x26ce}, {0x26d4, 0x26d4}, {0x26ea, 0x26ea}, {0x26f2, 0x26f3}, {0x26f5, 0x26f5},
	{0x26fa, 0x26fa}, {0x26fd, 0x26fd}, {0x2705, 0x2705}, {0x270a, 0x270b}, {0x2728, 0x2728},
	{0x274c, 0x274c}, {0x274e, 0x274e}, {0x2753, 0x2755}, {0x2757, 0x2757}, {0x2795, 0x2797},
	{0x27b0, 0x27b0}, {0x27bf, 0x27bf}, {0x2b1b, 0x2b1c}, {0x2b50, 0x2b50}, {0x2b55, 0x2b55},
	{0x2e80, 0x303e}, {0x3041, 0x33ff}, {0x3400, 0x4dbf}, {0x4e00, 0x9fff}, {0xa000, 0xa4cf},
	{0xa960, 0xa97f}, {0xac00, 0xd7a3}, {0xf900, 0xfaff}, {0xfe10, 0xfe19}, {0xfe30, 0xfe6f},
	{0xff00, 0xff60}, {0xffe0, 0xffe6}, {0x16fe0, 0x16fe4}, {0x16ff0, 0x16ff1}, {0x17000, 0x18d08},
	{0x1aff0, 0x1b2ff}, {0x1f004, 0x1f004}, {0x1f0cf, 0x1f0cf}, {0x1f18e, 0x1f18e}, {0x1f191, 0x1f19a},
	{0x1f200, 0x1f64f}, {0x1f680, 0x1f6ff}, {0x1f7e0, 0x1f7eb}, {0x1f90c, 0x1f9ff}, {0x1fa70, 0x1faff},
	{0x20000, 0x2fffd}, {0x30000, 0x3fffd},
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
