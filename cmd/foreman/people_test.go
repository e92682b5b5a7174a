package main

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/gateway"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// writeTokensFile writes a FOREMAN_AUTH_TOKENS_FILE and returns its path.
func writeTokensFile(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestConfigPeopleSettings(t *testing.T) {
	t.Parallel()
	cfg, err := parseConfig(t, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.SyncPriority != broker.PriorityHigh || cfg.JobsPriority != broker.PriorityNormal || cfg.MaxQueuePerProgram != 0 || cfg.AuthTokens != nil || cfg.ModelAdmins != nil {
		t.Errorf("defaults: sync %q jobs %q per program %d tokens %v", cfg.SyncPriority, cfg.JobsPriority, cfg.MaxQueuePerProgram, cfg.AuthTokens)
	}
	file := writeTokensFile(t, "# programs\ncarol:tokC\n\n")
	cfg, err = parseConfig(t, []string{"--jobs-priority=low"}, map[string]string{
		"FOREMAN_AUTH_TOKENS": "alice:tokA,bob:tokB", "FOREMAN_AUTH_TOKENS_FILE": file,
		"FOREMAN_MAX_QUEUE_PER_PROGRAM": "20", "FOREMAN_SYNC_PRIORITY": "normal", "FOREMAN_MODEL_ADMINS": "alice, carol",
		// Named tokens count as auth on a non-loopback address.
		"FOREMAN_ADDR": "0.0.0.0:8080",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []gateway.NamedToken{{Program: "alice", Token: "tokA"}, {Program: "bob", Token: "tokB"}, {Program: "carol", Token: "tokC"}}
	if strings.Join(cfg.ModelAdmins, ",") != "alice,carol" {
		t.Errorf("FOREMAN_MODEL_ADMINS=\"alice, carol\": %q", cfg.ModelAdmins)
	}
	if len(cfg.AuthTokens) != 3 || cfg.AuthTokens[0] != want[0] || cfg.AuthTokens[2] != want[2] ||
		cfg.MaxQueuePerProgram != 20 || cfg.SyncPriority != broker.PriorityNormal || cfg.JobsPriority != broker.PriorityLow {
		t.Errorf("settings: %+v", cfg)
	}
}

// Bad values are refused naming the setting; a token never shows in the message.
func TestConfigPeopleBadValues(t *testing.T) {
	t.Parallel()
	cases := []struct {
		args []string
		env  map[string]string
		want string
	}{
		{env: map[string]string{"FOREMAN_AUTH_TOKENS": "alice"}, want: `FOREMAN_AUTH_TOKENS=(hidden): entry 1: not name:token`},
		{env: map[string]string{"FOREMAN_AUTH_TOKENS": "alice:sekrit,bad name:sekrit2"}, want: `FOREMAN_AUTH_TOKENS=(hidden): entry 2: the name before the ":" must be`},
		{args: []string{"--auth-tokens=:sekrit"}, want: `--auth-tokens=(hidden): entry 1`},
		{env: map[string]string{"FOREMAN_AUTH_TOKENS_FILE": "/no/such/tokens"}, want: `FOREMAN_AUTH_TOKENS_FILE="/no/such/tokens"`},
		{env: map[string]string{"FOREMAN_AUTH_TOKENS_FILE": writeTokensFile(t, "alice:sekrit\nbob sekrit2\n")}, want: "line 2: not name:token"},
		{env: map[string]string{"FOREMAN_AUTH_TOKENS_FILE": writeTokensFile(t, "# nobody\n")}, want: "no name:token line"},
		{env: map[string]string{"FOREMAN_AUTH_TOKENS": "alice:sekrit", "FOREMAN_AUTH_TOKENS_FILE": writeTokensFile(t, "bob:sekrit\n")}, want: "alice and bob have the same token"},
		{env: map[string]string{"FOREMAN_AUTH_TOKENS": "alice:sekrit", "FOREMAN_AUTH_TOKEN": "sekrit2"}, want: "FOREMAN_AUTH_TOKEN and FOREMAN_AUTH_TOKENS (or FOREMAN_AUTH_TOKENS_FILE) exclude each other"},
		{env: map[string]string{"FOREMAN_MAX_QUEUE_PER_PROGRAM": "0"}, want: `FOREMAN_MAX_QUEUE_PER_PROGRAM="0": must be positive`},
		{env: map[string]string{"FOREMAN_MAX_QUEUE_PER_PROGRAM": "many"}, want: `FOREMAN_MAX_QUEUE_PER_PROGRAM="many": not an integer`},
		{env: map[string]string{"FOREMAN_SYNC_PRIORITY": "urgent"}, want: `FOREMAN_SYNC_PRIORITY="urgent": not a priority: must be high, normal or low`},
		{args: []string{"--jobs-priority=HIGH"}, want: `--jobs-priority="HIGH": not a priority`},
		{env: map[string]string{"FOREMAN_MODEL_ADMINS": "alice"}, want: "FOREMAN_MODEL_ADMINS names programs of named tokens, and there are none"},
		{env: map[string]string{"FOREMAN_MODEL_ADMINS": "alice", "FOREMAN_AUTH_TOKEN": "sekrit"}, want: "FOREMAN_MODEL_ADMINS names programs of named tokens, and there are none"},
		{env: map[string]string{"FOREMAN_MODEL_ADMINS": "alice,bobb", "FOREMAN_AUTH_TOKENS": "alice:sekrit,bob:sekrit2"}, want: `FOREMAN_MODEL_ADMINS names "bobb", the program of no named token`},
		{env: map[string]string{"FOREMAN_MODEL_ADMINS": "alice,bad name"}, want: `FOREMAN_MODEL_ADMINS="alice,bad name"`},
	}
	for _, c := range cases {
		_, err := parseConfig(t, c.args, c.env)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("args %q env %v: error %v, want %q", c.args, c.env, err, c.want)
			continue
		}
		if strings.Contains(err.Error(), "sekrit") {
			t.Errorf("args %q env %v: the error shows a token: %v", c.args, c.env, err)
		}
	}
}

// With named tokens the CLI (FOREMAN_TOKEN, through the Go client) works with any of
// them, and the job belongs to the token's program.
func TestServeNamedTokensCLI(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	a := testApp(t, fake.URL, map[string]string{"FOREMAN_AUTH_TOKENS": "alice:tokA,bob:tokB"})
	base := "http://" + a.Addr()
	for tok, program := range map[string]string{"tokA": "alice", "tokB": "bob"} {
		vars := map[string]string{"FOREMAN_URL": base, "FOREMAN_TOKEN": tok}
		r := runCLI(t, vars, nil, nil, "submit", "-m", "tiny-a", "--wait", "--json", "hi")
		if r.code != 0 || !strings.Contains(r.stdout, `"state": "done"`) {
			t.Fatalf("submit with %s's token: exit %d, stdout %s, stderr %s", program, r.code, r.stdout, r.stderr)
		}
		var v struct {
			Program  string `json:"program"`
			Priority string `json:"priority"`
		}
		if err := json.Unmarshal([]byte(r.stdout), &v); err != nil || v.Program != program || v.Priority != "normal" {
			t.Errorf("job of %s's token: %+v %v in %s", program, v, err, r.stdout)
		}
		if r := runCLI(t, vars, nil, nil, "tags"); r.code != 0 {
			t.Errorf("tags with %s's token: exit %d, stderr %s", program, r.code, r.stderr)
		}
	}
	// A program the request names does not override the token's.
	r := runCLI(t, map[string]string{"FOREMAN_URL": base, "FOREMAN_TOKEN": "tokA"}, nil, nil,
		"submit", "-m", "tiny-a", "--program", "mallory", "--priority", "low", "--wait", "--json", "hi")
	if r.code != 0 || !strings.Contains(r.stdout, `"program": "alice"`) || !strings.Contains(r.stdout, `"priority": "low"`) {
		t.Errorf("submit --program mallory --priority low with alice's token: exit %d, stdout %s, stderr %s", r.code, r.stdout, r.stderr)
	}
	r = runCLI(t, map[string]string{"FOREMAN_URL": base, "FOREMAN_TOKEN": "tokC"}, nil, nil, "submit", "-m", "tiny-a", "hi")
	if r.code == 0 || !strings.Contains(r.stderr, "unauthorized") {
		t.Errorf("a wrong token: exit %d, stderr %s", r.code, r.stderr)
	}
	resp, err := http.Get(base + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("/healthz without a token: %d", resp.StatusCode)
	}
}

// Without named tokens, foreman submit --program and --priority name the job's program
// and class; a bad value is foreman's 400.
func TestSubmitProgramAndPriority(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	a := testApp(t, fake.URL, nil)
	vars := map[string]string{"FOREMAN_URL": "http://" + a.Addr()}
	r := runCLI(t, vars, nil, nil, "submit", "-m", "tiny-a", "--program", "nightly", "--priority", "high", "--wait", "--json", "hi")
	if r.code != 0 || !strings.Contains(r.stdout, `"program": "nightly"`) || !strings.Contains(r.stdout, `"priority": "high"`) {
		t.Fatalf("submit --program nightly --priority high: exit %d, stdout %s, stderr %s", r.code, r.stdout, r.stderr)
	}
	runCLI(t, vars, nil, nil, "submit", "-m", "tiny-a", "--program", "other", "hi")
	r = runCLI(t, vars, nil, nil, "jobs", "list", "--program", "nightly", "--json")
	if r.code != 0 || strings.Count(r.stdout, `"id"`) != 1 || !strings.Contains(r.stdout, `"program": "nightly"`) {
		t.Errorf("jobs list --program nightly: exit %d, stdout %s, stderr %s", r.code, r.stdout, r.stderr)
	}
	r = runCLI(t, vars, nil, nil, "submit", "-m", "tiny-a", "--priority", "urgent", "hi")
	if r.code == 0 || !strings.Contains(r.stderr, "high, normal or low") {
		t.Errorf("submit --priority urgent: exit %d, stderr %s", r.code, r.stderr)
	}
}

// FOREMAN_MODEL_ADMINS reaches the gateway: bob's token may not delete a model, alice's
// may (ADR-0124).
func TestServeModelAdmins(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	a := testApp(t, fake.URL, map[string]string{"FOREMAN_AUTH_TOKENS": "alice:tokA,bob:tokB", "FOREMAN_MODEL_ADMINS": "alice"})
	del := func(tok string) (int, string) {
		req, err := http.NewRequest(http.MethodDelete, "http://"+a.Addr()+"/api/delete", strings.NewReader(`{"model":"tiny-b"}`))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var e struct {
			Error string `json:"error"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&e)
		return resp.StatusCode, e.Error
	}
	if code, msg := del("tokB"); code != http.StatusForbidden || !strings.Contains(msg, "FOREMAN_MODEL_ADMINS") {
		t.Errorf("bob deletes a model: %d %q, want 403 naming FOREMAN_MODEL_ADMINS", code, msg)
	}
	if code, msg := del("tokA"); code != http.StatusOK {
		t.Errorf("alice deletes a model: %d %q", code, msg)
	}
}
