package ollama_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// TestDocsQuoteRealStalls keeps the stall errors the docs quote ("target stalled: …",
// /healthz's "stalled: … on job …") to the words a *StallError says: every quoted one,
// in README.md, deploy/.env.example and the ADRs, is one of its reasons with its
// durations and status.
func TestDocsQuoteRealStalls(t *testing.T) {
	t.Parallel()
	const after = 7*time.Minute + 13*time.Second
	var forms []*regexp.Regexp
	for _, e := range []ollama.StallError{
		{FirstByte: true, After: after},
		{After: after},
		{Trickle: true, After: after},
		{Trickle: true, FirstByte: true, After: after},
		{Trickle: true, NotStreamed: true, After: after},
		{Status: 599, After: after},
	} {
		re := regexp.QuoteMeta(e.Reason())
		re = strings.ReplaceAll(re, regexp.QuoteMeta(after.String()), `[0-9hms.]+`)
		re = strings.ReplaceAll(re, "599", `[0-9]{3}`)
		forms = append(forms, regexp.MustCompile(`^(?:`+re+`)(?: on job \S+)?$`))
	}
	files, err := filepath.Glob("../docs/adr/*.md")
	if err != nil {
		t.Fatal(err)
	}
	files = append([]string{"../README.md", "../deploy/.env.example"}, files...)
	quoted := regexp.MustCompile("`([^`]*)`")
	checked := 0
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range quoted.FindAllStringSubmatch(string(data), -1) {
			q := strings.Join(strings.Fields(m[1]), " ")
			var reason string
			switch {
			case strings.HasPrefix(q, "target stalled: "):
				reason = strings.TrimPrefix(q, "target stalled: ")
			case strings.HasPrefix(q, "stalled: "): // /healthz's target.error
				reason = strings.TrimPrefix(q, "stalled: ")
			default:
				continue
			}
			checked++
			known := false
			for _, f := range forms {
				known = known || f.MatchString(reason)
			}
			if !known {
				t.Errorf("%s quotes %q, which no *StallError says", strings.TrimPrefix(file, "../"), q)
			}
		}
	}
	t.Logf("%d stall errors quoted", checked)
	if checked < 5 {
		t.Errorf("only %d stall errors quoted in the docs; the reader has lost them", checked)
	}
}
