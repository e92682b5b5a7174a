package main

import (
	"strings"
	"testing"
)

// TestTablesGolden renders every table and its --json from fixed data on a fixed clock.
func TestTablesGolden(t *testing.T) {
	t.Parallel()
	url := fakeForeman(t, "")
	for _, tc := range []struct {
		golden string
		args   []string
	}{
		{"ps.golden", []string{"ps"}},
		{"ps_json.golden", []string{"ps", "--json"}},
		{"tags.golden", []string{"tags"}},
		{"tags_json.golden", []string{"tags", "--json"}},
		{"jobs_list.golden", []string{"jobs"}},
		{"jobs_list.golden", []string{"jobs", "list"}},
		{"jobs_list_json.golden", []string{"jobs", "list", "--json"}},
		{"jobs_get.golden", []string{"jobs", "get", "01JGJ4Q2R0000000000000000A"}},
		{"jobs_get_json.golden", []string{"jobs", "get", "01JGJ4Q2R0000000000000000A", "--json"}},
		{"jobs_get_failed.golden", []string{"jobs", "get", "01JGJ4Q2R0000000000000000Z"}},
	} {
		t.Run(strings.Join(tc.args, "_"), func(t *testing.T) {
			t.Parallel()
			r := runCLI(t, map[string]string{"FOREMAN_URL": url}, nil, nil, tc.args...)
			if r.code != 0 || r.stderr != "" {
				t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
			}
			golden(t, tc.golden, r.stdout)
		})
	}
}

func TestErrorsAreOneLine(t *testing.T) {
	t.Parallel()
	url := fakeForeman(t, "s3cret")
	for _, tc := range []struct {
		name   string
		vars   map[string]string
		args   []string
		stderr string
	}{
		{"unreachable", nil, []string{"ps", "--url", "http://127.0.0.1:1"},
			"foreman: cannot reach http://127.0.0.1:1: connection refused — is \"foreman serve\" running?\n"},
		{"unreachable env", map[string]string{"FOREMAN_URL": "http://127.0.0.1:1"}, []string{"jobs"},
			"foreman: cannot reach http://127.0.0.1:1: connection refused — is \"foreman serve\" running?\n"},
		{"unauthorized", map[string]string{"FOREMAN_URL": url}, []string{"tags"},
			"foreman: unauthorized: missing or wrong bearer token (set FOREMAN_TOKEN or --token)\n"},
		{"wrong token flag", map[string]string{"FOREMAN_URL": url, "FOREMAN_TOKEN": "s3cret"}, []string{"tags", "--token", "nope"},
			"foreman: unauthorized: missing or wrong bearer token (set FOREMAN_TOKEN or --token)\n"},
		{"not found", map[string]string{"FOREMAN_URL": url, "FOREMAN_TOKEN": "s3cret"}, []string{"jobs", "get", "01JGJ4Q2R00000000000000000"},
			"foreman: job not found\n"},
		{"bad url", nil, []string{"ps", "--url", "localhost:8080"},
			"foreman: --url/FOREMAN_URL: client: base URL \"localhost:8080\" is not an absolute http(s) URL (begin it with http:// or https://)\n"},
		{"chat needs a model", nil, []string{"chat", "hi"},
			"foreman: a model is required: foreman chat -m MODEL [PROMPT]\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := runCLI(t, tc.vars, nil, nil, tc.args...)
			if r.code == 0 || r.stderr != tc.stderr || r.stdout != "" {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit 1 and stderr %q", r.code, r.stdout, r.stderr, tc.stderr)
			}
		})
	}
	// With the token the same command works.
	if r := runCLI(t, map[string]string{"FOREMAN_URL": url, "FOREMAN_TOKEN": "s3cret"}, nil, nil, "tags"); r.code != 0 {
		t.Fatalf("tags with FOREMAN_TOKEN: exit %d, %s", r.code, r.stderr)
	}
}

func TestCompletion(t *testing.T) {
	t.Parallel()
	for _, shell := range []string{"bash", "zsh", "fish", "powershell"} {
		r := runCLI(t, nil, nil, nil, "completion", shell)
		if r.code != 0 || !strings.Contains(r.stdout, "foreman") || len(r.stdout) < 500 {
			t.Errorf("completion %s: exit %d, %d bytes, stderr %q", shell, r.code, len(r.stdout), r.stderr)
		}
	}
	if r := runCLI(t, nil, nil, nil, "completion", "tcsh"); r.code == 0 {
		t.Error("completion tcsh succeeded")
	}
}
