package main

import (
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// TestDocsCommandLinesUseRealFlags keeps the command lines of the README, the ADRs and
// deploy/ true to the CLI: each `foreman CMD ... --flag` (in a code block or in
// backticks, also written without "foreman": `submit --wait`, or as the binary's path or
// `go run ./cmd/foreman`; in deploy/'s scripts, units and configs, any line) names a
// command that exists and flags that command takes, and each flag of the README's
// settings table is one of serve's.
func TestDocsCommandLinesUseRealFlags(t *testing.T) {
	t.Parallel()
	root := newRootCmd(&env{stdin: strings.NewReader(""), stdout: io.Discard, stderr: io.Discard, getenv: func(string) string { return "" }})
	files, err := filepath.Glob("../../docs/adr/*.md")
	if err != nil {
		t.Fatal(err)
	}
	deploy, err := filepath.Glob("../../deploy/*")
	if err != nil {
		t.Fatal(err)
	}
	bench, err := filepath.Glob("../../deploy/bench/*")
	if err != nil {
		t.Fatal(err)
	}
	files = append(append(append([]string{"../../README.md"}, files...), deploy...), bench...)
	checked := 0
	for _, file := range files {
		if fi, err := os.Stat(file); err != nil || fi.IsDir() {
			continue
		}
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		lines := commandLines(string(data))
		if !strings.HasSuffix(file, ".md") {
			// A script, a unit or a config: a command may be on any line of it.
			lines = strings.Split(string(data), "\n")
		}
		for _, line := range lines {
			for _, seg := range regexp.MustCompile(`[;|&]|\$\(`).Split(line, -1) {
				if problem, ok := checkCommandLine(root, strings.Fields(seg)); ok {
					checked++
					if problem != "" {
						t.Errorf("%s: %q: %s", file, strings.TrimSpace(seg), problem)
					}
				}
			}
		}
	}
	if checked < 20 {
		t.Errorf("only %d command lines found in the docs; the reader has lost them", checked)
	}

	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	serve, _, err := root.Find([]string{"serve"})
	if err != nil {
		t.Fatal(err)
	}
	table := string(readme)[strings.Index(string(readme), "| variable | flag | default | meaning |"):]
	for _, row := range strings.Split(table, "\n")[2:] {
		if !strings.HasPrefix(row, "| ") {
			break
		}
		cells := strings.Split(row, "|")
		for _, f := range regexp.MustCompile("`--([a-z0-9-]+)`").FindAllStringSubmatch(cells[2], -1) {
			if serve.Flags().Lookup(f[1]) == nil {
				t.Errorf("README's settings table names --%s, which serve does not take: %s", f[1], row)
			}
		}
	}
}

// commandLines are the texts of a markdown file that may hold a command: the spans in
// backticks and the lines of its code blocks.
func commandLines(md string) []string {
	var out []string
	inBlock := false
	for _, line := range strings.Split(md, "\n") {
		if strings.HasPrefix(line, "```") {
			inBlock = !inBlock
			continue
		}
		if inBlock {
			out = append(out, line)
			continue
		}
		for _, m := range regexp.MustCompile("`([^`]+)`").FindAllStringSubmatch(line, -1) {
			out = append(out, m[1])
		}
	}
	return out
}

// checkCommandLine checks the flags of one command line: ok is false for a text that is
// no foreman command, problem is "" for one whose flags its command takes.
func checkCommandLine(root *cobra.Command, toks []string) (problem string, ok bool) {
	if len(toks) > 3 && toks[0] == "go" && toks[1] == "run" && strings.HasSuffix(toks[2], "cmd/foreman") {
		toks = toks[3:]
	} else if len(toks) > 0 && isForeman(toks[0]) {
		toks = toks[1:]
	} else if len(toks) < 2 || subcommand(root, toks[0]) == nil {
		// Without "foreman" a command is only taken with something after it: "queue"
		// alone is a word.
		return "", false
	}
	cmd := root
	for len(toks) > 0 {
		sub := subcommand(cmd, toks[0])
		if sub == nil {
			break
		}
		cmd, toks = sub, toks[1:]
	}
	if cmd == root {
		return "", false
	}
	for _, tok := range toks {
		if strings.HasPrefix(tok, "#") {
			break
		}
		name, long := strings.CutPrefix(tok, "--")
		name, _, _ = strings.Cut(name, "=")
		switch {
		case long && name != "" && name != "help":
			if cmd.Flags().Lookup(name) == nil && cmd.InheritedFlags().Lookup(name) == nil {
				return cmd.CommandPath() + " has no flag --" + name, true
			}
		case !long && len(tok) == 2 && tok[0] == '-' && tok[1] != 'h' && tok[1] >= 'a' && tok[1] <= 'z':
			if cmd.Flags().ShorthandLookup(tok[1:]) == nil {
				return cmd.CommandPath() + " has no flag " + tok, true
			}
		}
	}
	return "", true
}

// isForeman reports whether tok runs the foreman binary: "foreman", or a path to it as a
// script, a unit or a Dockerfile writes it ("$work/foreman", ExecStart=/usr/local/bin/foreman).
func isForeman(tok string) bool {
	tok = strings.Trim(tok, `"'[,`)
	if _, after, ok := strings.Cut(tok, "="); ok {
		tok = after
	}
	return tok == "foreman" || strings.HasSuffix(tok, "/foreman")
}

// subcommand is cmd's subcommand called name, or nil.
func subcommand(cmd *cobra.Command, name string) *cobra.Command {
	for _, c := range cmd.Commands() {
		if c.Name() == name {
			return c
		}
	}
	return nil
}
