package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"text/tabwriter"
)

// wideJob is a job record whose model and program are named in wide characters.
func wideJob(id, model, program, state, created string) string {
	return `{"id":"` + id + `","kind":"chat","model":"` + model + `","state":"` + state + `","attempts":1,"priority":"normal","program":"` + program + `",` +
		`"created_at":"` + created + `","started_at":"2025-01-02T03:00:05Z","finished_at":"2025-01-02T03:01:05Z","error":"","result":null,"artifacts":[]}`
}

// TestTablesAlignWideNames: a column of the CLI's tables starts at the same terminal
// column on every row when a cell before it holds text two columns a character wide
// (Han, kana, emoji) or a combining mark: text/tabwriter counted characters, so a row
// with a model "通义千问:7b" had its later cells pushed right by one column a wide
// character, and one with "café" (e, combining acute) pulled left.
func TestTablesAlignWideNames(t *testing.T) {
	t.Parallel()
	const (
		han   = "通义千问:7b"
		emoji = "🦙llama🦙"
		mark  = "cafe\u0301:1b"
	)
	jobs := `{"jobs":[` + wideJob("01JGJ4Q2R0000000000000000A", han, "数据", "done", "2025-01-02T02:59:05Z") + `,` +
		wideJob("01JGJ4Q2R0000000000000000B", emoji, "🙂", "failed", "2025-01-02T02:58:05Z") + `,` +
		wideJob("01JGJ4Q2R0000000000000000C", mark, "etl", "done", "2025-01-02T02:57:05Z") + `,` +
		wideJob("01JGJ4Q2R0000000000000000D", "llama3.2", "", "done", "2025-01-02T02:56:05Z") + `],"next_cursor":"","now":"2025-01-02T03:04:05Z"}`
	queued := func(id, model, program string, pos int) string {
		return `{"job_id":"` + id + `","model":"` + model + `","kind":"chat","priority":"normal","program":"` + program + `","state":"queued",` +
			`"created_at":"2025-01-02T03:00:05Z","queue_position":` + string(rune('0'+pos)) + `,"eta":"2025-01-02T03:05:05Z"}`
	}
	queue := `{"running":null,"loaded":[],"queued":[` + queued("01JGJ4Q2R0000000000000000E", han, "数据", 1) + `,` +
		queued("01JGJ4Q2R0000000000000000F", emoji, "🙂", 2) + `,` + queued("01JGJ4Q2R0000000000000000G", mark, "", 3) + `,` +
		queued("01JGJ4Q2R0000000000000000H", "llama3.2", "etl", 4) + `],"total":4,"paused":null,"now":"2025-01-02T03:04:05Z"}`
	model := func(name string) string {
		return `{"name":"` + name + `","model":"` + name + `","size":397821319,"digest":"a8b0c51577010a279d933d14c2a8ab4b268079d44c5c8830c0a93900f1827c67",` +
			`"modified_at":"2025-01-02T00:04:05Z","expires_at":"2025-01-02T03:08:05Z","size_vram":397821319}`
	}
	models := `{"models":[` + model(han) + `,` + model(emoji) + `,` + model(mark) + `,` + model("llama3.2") + `]}`
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		body, ok := map[string]string{"/jobs": jobs, "/queue": queue, "/api/ps": models, "/api/tags": models}[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		_, _ = io.WriteString(w, body)
	}))
	t.Cleanup(srv.Close)
	for _, tc := range []struct {
		args []string
		// header starts the table; after is the header of a column after the wide ones,
		// whose cells must all start where it starts.
		header, after string
	}{
		{[]string{"jobs"}, "ID", "AGE"},
		{[]string{"ps"}, "NAME", "SIZE"},
		{[]string{"tags"}, "NAME", "SIZE"},
		{[]string{"queue"}, "POS", "AGE"},
		{[]string{"top", "--once"}, "POS", "WAITING"},
		{[]string{"top", "--once"}, "FINISHED", "WAIT"},
	} {
		r := runCLI(t, map[string]string{"FOREMAN_URL": srv.URL}, nil, nil, tc.args...)
		if r.code != 0 {
			t.Fatalf("%v: exit %d, stderr %q", tc.args, r.code, r.stderr)
		}
		lines := strings.Split(r.stdout, "\n")
		start := -1
		for i, l := range lines {
			if strings.HasPrefix(l, tc.header+" ") {
				start = i
				break
			}
		}
		if start < 0 {
			t.Fatalf("%v: no table headed %s:\n%s", tc.args, tc.header, r.stdout)
		}
		hdr := lines[start]
		col := displayWidth(hdr[:strings.Index(hdr, " "+tc.after+" ")+1])
		rows := 0
		for _, l := range lines[start+1:] {
			if l == "" {
				break
			}
			rows++
			if w := displayWidth(l); w <= col {
				t.Errorf("%v: row %q ends before column %d", tc.args, l, col)
				continue
			}
			// The cell at col starts after a space, with no space in col itself.
			before, at := cutColumns(l, col)
			if !strings.HasSuffix(before, " ") || strings.HasPrefix(at, " ") {
				t.Errorf("%v: the %s column (terminal column %d) does not start there in row:\n%s\n%s", tc.args, tc.after, col, hdr, l)
			}
		}
		if rows != 4 {
			t.Errorf("%v: %d rows under %q, want 4:\n%s", tc.args, rows, hdr, r.stdout)
		}
	}
}

// cutColumns splits s where its first col terminal columns end.
func cutColumns(s string, col int) (before, after string) {
	n := 0
	for i, r := range s {
		if n >= col {
			return s[:i], s[i:]
		}
		n += runeWidth(r)
	}
	return s, ""
}

// TestColumnsLaysOutAsTabwriter: for text a character a column wide, columns writes what
// text/tabwriter writes (padchar ' ', minwidth 0), ragged lines included: a line with
// fewer cells ends a column's run, text after a line's last tab is not aligned.
func TestColumnsLaysOutAsTabwriter(t *testing.T) {
	t.Parallel()
	for _, text := range []string{
		"",
		"no tabs\n",
		"A\tB\tC\nlonger cell\tb\tc\n",
		"A\tB\tC\nx\ty\n\nlong long\tz\tw\tv\nq\n",
		"h1\th2\t\n1\t22\t\n333\t4\t\n",
		"a\tb\nno newline at the end\tc",
		"\t\t\nx\t\ty\n",
	} {
		for _, padding := range []int{1, 2, 3} {
			var want, got strings.Builder
			tw := tabwriter.NewWriter(&want, 0, 8, padding, ' ', 0)
			_, _ = io.WriteString(tw, text)
			_ = tw.Flush()
			c := newColumns(&got, padding)
			_, _ = io.WriteString(c, text)
			if err := c.Flush(); err != nil {
				t.Fatal(err)
			}
			if got.String() != want.String() {
				t.Errorf("padding %d, %q:\ngot  %q\nwant %q", padding, text, got.String(), want.String())
			}
		}
	}
}
