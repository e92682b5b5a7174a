package main

import (
	"strings"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/cmd/foreman/app"
)

// FOREMAN_TARGET_NAME (ADR-0029): a host name is taken, the default is the host name, and
// a name that cannot be a KV key or read well is refused.
func TestConfigTargetName(t *testing.T) {
	t.Parallel()
	cfg, err := parseConfig(t, nil, map[string]string{"FOREMAN_TARGET_NAME": "studio-2.local"})
	if err != nil || cfg.TargetName != "studio-2.local" {
		t.Fatalf("name: %q, %v", cfg.TargetName, err)
	}
	cfg, err = parseConfig(t, []string{"--target-name=mini_1"}, nil)
	if err != nil || cfg.TargetName != "mini_1" {
		t.Fatalf("flag: %q, %v", cfg.TargetName, err)
	}
	cfg, err = parseConfig(t, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Config.WithDefaults().TargetName; got != app.DefaultTargetName() || got == "" {
		t.Errorf("default %q, want the host name %q", got, app.DefaultTargetName())
	}
	for _, bad := range []string{"my mac", "a*b", strings.Repeat("m", 65)} {
		_, err := parseConfig(t, nil, map[string]string{"FOREMAN_TARGET_NAME": bad})
		if err == nil || !strings.Contains(err.Error(), `FOREMAN_TARGET_NAME="`+bad+`": not a name`) {
			t.Errorf("%q: %v", bad, err)
		}
	}
}
