package main

import (
	"bytes"
	"io"
	"strings"
)

// columns lays out tab-separated cells as text/tabwriter does with padchar ' ' and
// minwidth 0 (a cell ends at a tab; a line's text after its last tab is not aligned; a
// column's width is its widest cell plus padding, over the run of adjacent lines that
// have a cell there), but measures a cell in terminal columns (displayWidth), not in
// characters: tabwriter took a model named in Han characters or emoji as half as wide
// as a terminal draws it, and pushed that row's later cells out of their columns.
type columns struct {
	w       io.Writer
	padding int
	buf     bytes.Buffer
}

// newColumns is a columns writing to w, padding cells by padding spaces; Flush writes.
func newColumns(w io.Writer, padding int) *columns {
	return &columns{w: w, padding: padding}
}

func (c *columns) Write(p []byte) (int, error) { return c.buf.Write(p) }

// Flush writes the lines written since the last Flush, aligned.
func (c *columns) Flush() error {
	text := c.buf.String()
	c.buf.Reset()
	if text == "" {
		return nil
	}
	lines := strings.SplitAfter(text, "\n")
	if lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	cells := make([][]string, len(lines))
	for i, l := range lines {
		cells[i] = strings.Split(l, "\t")
	}
	// widths[i][j] is the width of line i's cell j, for each cell a tab ends.
	widths := make([][]int, len(lines))
	for i := range cells {
		widths[i] = make([]int, len(cells[i])-1)
	}
	for j := 0; ; j++ {
		found := false
		for i := 0; i < len(cells); {
			if j >= len(cells[i])-1 {
				i++
				continue
			}
			found = true
			run := i
			width := 0
			for ; i < len(cells) && j < len(cells[i])-1; i++ {
				width = max(width, displayWidth(cells[i][j])+c.padding)
			}
			for k := run; k < i; k++ {
				widths[k][j] = width
			}
		}
		if !found {
			break
		}
	}
	var out strings.Builder
	for i, row := range cells {
		for j, cell := range row {
			out.WriteString(cell)
			if j < len(row)-1 {
				out.WriteString(strings.Repeat(" ", widths[i][j]-displayWidth(cell)))
			}
		}
	}
	_, err := io.WriteString(c.w, out.String())
	return err
}
