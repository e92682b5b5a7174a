package main

import (
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestDocsNameRealTests keeps the tests the docs cite as evidence real: each Test…,
// Benchmark… or Fuzz… name in README.md, docs/*.md and the ADRs is a function of some
// _test.go of the module (a name in a pattern, as in `-bench 'BenchmarkQueued'` or
// `BenchmarkQueuedChat(Paced|AfterIdle)$`, the start of one). A test renamed
// or taken out leaves the ADR that cites it pointing at nothing.
func TestDocsNameRealTests(t *testing.T) {
	t.Parallel()
	have := map[string]bool{}
	decl := regexp.MustCompile(`(?m)^func ((?:Test|Benchmark|Fuzz)[A-Za-z0-9_]*)\(`)
	err := filepath.WalkDir("../..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") && path != "../.." || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, "_test.go") {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range decl.FindAllStringSubmatch(string(data), -1) {
			have[m[1]] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !have["TestDocsNameRealTests"] {
		t.Fatal("the walk found no test functions; it has lost the module's files")
	}
	docs, err := filepath.Glob("../../docs/adr/*.md")
	if err != nil {
		t.Fatal(err)
	}
	more, err := filepath.Glob("../../docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	docs = append(append([]string{"../../README.md"}, more...), docs...)
	cited := regexp.MustCompile(`\b((?:Test|Benchmark|Fuzz)[A-Z][A-Za-z0-9_]*)([(*'$|])?`)
	checked := 0
	for _, file := range docs {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range cited.FindAllStringSubmatch(string(data), -1) {
			checked++
			if have[m[1]] || m[2] != "" && hasPrefixed(have, m[1]) {
				continue
			}
			t.Errorf("%s cites %s, which no _test.go of the module declares", strings.TrimPrefix(file, "../../"), m[1])
		}
	}
	if checked < 100 {
		t.Errorf("only %d test names found in the docs; the reader has lost them", checked)
	}
}

// hasPrefixed reports whether a name in have starts with p.
func hasPrefixed(have map[string]bool, p string) bool {
	for n := range have {
		if strings.HasPrefix(n, p) {
			return true
		}
	}
	return false
}

// TestEveryADRIsListed keeps the two lists of decisions whole: each docs/adr/NNNN-*.md
// has its line in docs/adr/README.md, linked by its file name, and its number in the
// README's Layout row for docs/adr; every link of the index names a file that exists.
func TestEveryADRIsListed(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("../../docs/adr/[0-9][0-9][0-9][0-9]-*.md")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 100 {
		t.Fatalf("only %d ADRs found; the glob has lost them", len(files))
	}
	index, err := os.ReadFile("../../docs/adr/README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var layout string
	for _, line := range strings.Split(string(readme), "\n") {
		if strings.HasPrefix(line, "| `docs/adr` |") {
			layout = line
		}
	}
	if layout == "" {
		t.Fatal("README: no Layout row for docs/adr")
	}
	for _, f := range files {
		name := filepath.Base(f)
		n := name[:4]
		if !strings.Contains(string(index), "["+n+"]("+name+")") {
			t.Errorf("docs/adr/README.md has no line linking [%s](%s)", n, name)
		}
		if !regexp.MustCompile(`\b(?:ADR-)?` + n + ` `).MatchString(layout) {
			t.Errorf("README's Layout row for docs/adr does not name %s (%s)", n, name)
		}
	}
	for _, m := range regexp.MustCompile(`\]\(([0-9]{4}-[^)]+\.md)\)`).FindAllStringSubmatch(string(index), -1) {
		if _, err := os.Stat("../../docs/adr/" + m[1]); err != nil {
			t.Errorf("docs/adr/README.md links %s, which does not exist", m[1])
		}
	}
}

// TestTimeoutDefaultsAreTheREADMEs keeps the --timeout defaults the README gives ("30s,
// `submit` 1m" for the commands that ask once and for the waits; `bench chat` 5m,
// `bench submit` 30s) to the flags' own.
func TestTimeoutDefaultsAreTheREADMEs(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := strings.Join(strings.Fields(string(data)), " ")
	for _, said := range []string{
		"give up after `--timeout` (30s, `submit` 1m; `0` waits for ever)",
		"has `--timeout` (30s, `submit` 1m; `0` waits for ever) to be answered",
		"bounded by `--timeout` (`bench chat` 5m, for a model's load or a wait behind other jobs; `bench submit` 30s; `0` waits for ever)",
		"Live `top` waits at most 10 s for each refresh",
	} {
		if !strings.Contains(readme, said) {
			t.Errorf("README no longer says %q; keep this test's table in step", said)
		}
	}
	if refreshTimeout != 10*time.Second {
		t.Errorf("live top's refresh waits at most %s; README says 10 s", refreshTimeout)
	}
	root := newRootCmd(&env{stdin: strings.NewReader(""), stdout: io.Discard, stderr: io.Discard, getenv: func(string) string { return "" }})
	for cmd, want := range map[string]string{
		"queue": "30s", "jobs list": "30s", "jobs get": "30s", "jobs cancel": "30s", "jobs watch": "30s",
		"ps": "30s", "tags": "30s", "top": "30s", "chat": "30s", "submit": "1m0s",
		"bench chat": "5m0s", "bench submit": "30s",
	} {
		c, _, err := root.Find(strings.Fields(cmd))
		if err != nil || c.Flags().Lookup("timeout") == nil {
			t.Errorf("foreman %s has no --timeout (%v)", cmd, err)
			continue
		}
		if got := c.Flags().Lookup("timeout").DefValue; got != want {
			t.Errorf("foreman %s --timeout defaults to %s; README says %s", cmd, got, want)
		}
	}
}
