package main

import (
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestDocumentedRangesAreServes keeps the ranges the README's settings table gives
// ("at least `100ms`", "at most `100`") to those serve enforces: the bound itself is
// taken, a value just past it refused.
func TestDocumentedRangesAreServes(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	byEnv := map[string]*setting{}
	for _, s := range (&serveConfig{}).settings() {
		byEnv[s.env] = s
	}
	bound := regexp.MustCompile("\\b(at least|at most) `([^`]+)`")
	checked := 0
	for _, line := range strings.Split(string(readme), "\n") {
		if !strings.HasPrefix(line, "| `FOREMAN_") {
			continue
		}
		cells := strings.Split(line, "|")
		if len(cells) < 5 {
			continue
		}
		s := byEnv[strings.Trim(strings.TrimSpace(cells[1]), "`")]
		if s == nil {
			continue // TestDocumentedDefaultsAreServes names it
		}
		for _, m := range bound.FindAllStringSubmatch(cells[4], -1) {
			checked++
			past, ok := justPast(m[2], m[1] == "at most")
			if !ok {
				t.Errorf("README: %s is %s %q, which is no duration or number", s.env, m[1], m[2])
				continue
			}
			if err := s.parse(m[2]); err != nil {
				t.Errorf("README: %s is %s %s, but serve refuses %s: %v", s.env, m[1], m[2], m[2], err)
			}
			if err := s.parse(past); err == nil {
				t.Errorf("README: %s is %s %s, but serve takes %s", s.env, m[1], m[2], past)
			}
		}
	}
	if checked < 3 {
		t.Errorf("only %d ranges found in the settings table; the reader has lost them", checked)
	}
}

// justPast is the value next to v (a duration or an integer) past the bound: above it
// for a maximum, below it for a minimum.
func justPast(v string, max bool) (string, bool) {
	step := -1
	if max {
		step = 1
	}
	if n, err := strconv.Atoi(v); err == nil {
		return strconv.Itoa(n + step), true
	}
	if d, err := time.ParseDuration(v); err == nil {
		return (d + time.Duration(step)*time.Millisecond).String(), true
	}
	return "", false
}
