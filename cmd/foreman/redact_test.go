package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/cmd/foreman/app"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// testPassword is the secret no message, log line or answer may show.
const testPassword = "s3cret"

// lockedBuffer is a log sink safe for foreman's goroutines and the test.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// closedPort is a loopback address nothing listens on.
func closedPort(t *testing.T) string { return ollamatest.ClosedAddr(t) }

// Bad URLs with credentials are refused without showing the credentials, from the
// environment or a flag, and through the whole CLI.
func TestConfigErrorsHideURLCredentials(t *testing.T) {
	t.Parallel()
	cases := []struct {
		args []string
		env  map[string]string
		want string
	}{
		{env: map[string]string{"FOREMAN_OLLAMA_URL": "ftp://user:s3cret@mac:11434"}, want: `FOREMAN_OLLAMA_URL="ftp://xxxxx@mac:11434": not an absolute http(s) URL`},
		{env: map[string]string{"FOREMAN_OLLAMA_URL": "http://user:s3cret@mac:bad port"}, want: `FOREMAN_OLLAMA_URL="http://xxxxx@mac:bad port"`},
		{args: []string{"--ollama-url=ftp://s3cret@mac"}, want: `--ollama-url="ftp://xxxxx@mac"`},
		{env: map[string]string{"FOREMAN_OLLAMA_URL": "http://tok/s3cret@127.0.0.1:1"}, want: `FOREMAN_OLLAMA_URL="http://xxxxx@127.0.0.1:1": an "@" past the user`},
		{env: map[string]string{"FOREMAN_NATS_URL": "nats://tok/s3cret@127.0.0.1:1"}, want: `FOREMAN_NATS_URL="nats://xxxxx@127.0.0.1:1": entry 1: an "@" past the user`},
		{env: map[string]string{"FOREMAN_NATS_URL": "nats://app:s3cret@127.0.0.1:bad"}, want: `FOREMAN_NATS_URL="nats://xxxxx@127.0.0.1:bad": entry 1 is not a NATS URL`},
		{env: map[string]string{"FOREMAN_NATS_URL": "nats://a:4222, nats://app:s3cret@b:x:y"}, want: `entry 2 is not a NATS URL`},
		// Each entry of a list is shown, each redacted on its own.
		{env: map[string]string{"FOREMAN_NATS_URL": "nats://127.0.0.1:1,nats://app:s3cret@127.0.0.1:bad"}, want: `FOREMAN_NATS_URL="nats://127.0.0.1:1,nats://xxxxx@127.0.0.1:bad": entry 2 is not a NATS URL`},
		{args: []string{"--nats-url=nats://s3cret@[::1"}, want: `--nats-url="nats://xxxxx@[::1"`},
		// A comma in a password: NATS splits the list there.
		{env: map[string]string{"FOREMAN_NATS_URL": "nats://alice:s3cret,tail@127.0.0.1:4222"}, want: `FOREMAN_NATS_URL="nats://xxxxx@127.0.0.1:4222": entry 1 is not a NATS URL`},
		{env: map[string]string{"FOREMAN_NATS_URL": "nats://alice:s3cret,x@127.0.0.1:bad"}, want: `FOREMAN_NATS_URL="nats://xxxxx@127.0.0.1:bad": entry 1 is not a NATS URL (nats://[user:password@]host:port; a comma in a user or password is written %2C)`},
		{env: map[string]string{"FOREMAN_NATS_URL": "nats://alice:123,s3cret@127.0.0.1:4222"}, want: `FOREMAN_NATS_URL="nats://xxxxx@127.0.0.1:4222": entry 2 has a user but no NATS scheme: give each URL its own (nats://user:password@host:port), and write a comma in a user or password as %2C`},
	}
	for _, c := range cases {
		_, err := parseConfig(t, c.args, c.env)
		if err == nil {
			t.Errorf("args %q env %v: accepted", c.args, c.env)
			continue
		}
		if strings.Contains(err.Error(), testPassword) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("args %q env %v: error %q, want one containing %q and no password", c.args, c.env, err, c.want)
		}
	}

	var stdout, stderr bytes.Buffer
	env := map[string]string{"FOREMAN_OLLAMA_URL": "ftp://user:s3cret@mac", "FOREMAN_NATS_URL": "nats://s3cret@h:bad", "FOREMAN_DATA_DIR": t.TempDir()}
	code := execute([]string{"serve"}, strings.NewReader(""), &stdout, &stderr, func(k string) string { return env[k] })
	if code != 1 || strings.Contains(stderr.String(), testPassword) || !strings.Contains(stderr.String(), "FOREMAN_NATS_URL") {
		t.Fatalf("exit %d, stderr %q", code, stderr.String())
	}
}

func TestShownValueHidesSecrets(t *testing.T) {
	t.Parallel()
	for _, env := range []string{"FOREMAN_OLLAMA_TOKEN", "FOREMAN_AUTH_TOKEN", "FOREMAN_NATS_PASSWORD", "FOREMAN_WEBHOOK_SECRET"} {
		if got := shownValue(env, testPassword); strings.Contains(got, testPassword) {
			t.Errorf("shownValue(%s) = %q", env, got)
		}
	}
	if got := shownValue("FOREMAN_JOB_TTL", "abc"); got != `"abc"` {
		t.Errorf("shownValue(FOREMAN_JOB_TTL) = %s", got)
	}
}

// An external NATS that cannot be reached fails the start (once the start context ends:
// until then foreman waits for it) without showing the password (or token) of
// FOREMAN_NATS_URL.
func TestStartErrorsHideNATSCredentials(t *testing.T) {
	t.Parallel()
	addr := closedPort(t)
	for _, nu := range []string{"nats://app:" + testPassword + "@" + addr, "nats://" + testPassword + "@" + addr, "nats://127.0.0.1:1, nats://app:" + testPassword + "@" + addr} {
		cfg, err := parseConfig(t, nil, map[string]string{"FOREMAN_ADDR": "127.0.0.1:0", "FOREMAN_NATS_URL": nu})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		a, err := app.Start(ctx, cfg.Config, slog.New(slog.DiscardHandler))
		cancel()
		if err == nil {
			_ = a.Shutdown(context.Background())
			t.Fatalf("FOREMAN_NATS_URL=%s: started", nu)
		}
		if strings.Contains(err.Error(), testPassword) || !strings.Contains(err.Error(), "FOREMAN_NATS_URL") {
			t.Errorf("FOREMAN_NATS_URL=%s: error %q", nu, err)
		}
	}
}

// An Ollama URL the client refuses (config checks it first; app.Start may be called
// with any) fails the start without showing its password.
func TestStartErrorsHideOllamaCredentials(t *testing.T) {
	t.Parallel()
	cfg, err := parseConfig(t, nil, map[string]string{"FOREMAN_ADDR": "127.0.0.1:0", "FOREMAN_DATA_DIR": t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	cfg.OllamaURL = "ftp://user:" + testPassword + "@mac:11434"
	a, err := app.Start(context.Background(), cfg.Config, slog.New(slog.DiscardHandler))
	if err == nil {
		_ = a.Shutdown(context.Background())
		t.Fatal("started with an ftp Ollama URL")
	}
	if strings.Contains(err.Error(), testPassword) || !strings.Contains(err.Error(), "FOREMAN_OLLAMA_URL") {
		t.Errorf("error %q", err)
	}
}

var servingAddr = regexp.MustCompile(`msg="foreman is serving" addr=(\S+)`)

// A running foreman whose FOREMAN_OLLAMA_URL holds a password shows it nowhere: not in
// its log (start line, target errors, failed requests), on /healthz or in a 502.
func TestServeNeverShowsOllamaPassword(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	fake.SetDown(true)
	target := strings.Replace(fake.URL, "://", "://user:"+testPassword+"@", 1)
	cfg, err := parseConfig(t, nil, map[string]string{
		"FOREMAN_ADDR": "127.0.0.1:0", "FOREMAN_DATA_DIR": t.TempDir(), "FOREMAN_OLLAMA_URL": target,
		"FOREMAN_POLL_INTERVAL": "100ms", "FOREMAN_LOG_LEVEL": "debug",
	})
	if err != nil {
		t.Fatal(err)
	}
	var logs lockedBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, *cfg, log, nil) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
		if !strings.Contains(logs.String(), "ollama target degraded") {
			t.Errorf("the target's failure was not logged:\n%s", logs.String())
		}
		if strings.Contains(logs.String(), testPassword) {
			t.Errorf("the log shows the password:\n%s", logs.String())
		}
	}()
	var addr string
	waitFor(t, "foreman is serving", func() bool {
		m := servingAddr.FindStringSubmatch(logs.String())
		if m != nil {
			addr = m[1]
		}
		return m != nil
	})
	waitFor(t, "the target seen down", func() bool { return strings.Contains(logs.String(), "ollama target degraded") })

	for _, r := range []struct{ method, path, body string }{
		{http.MethodGet, "/healthz", ""},
		{http.MethodPost, "/api/embed", `{"model":"tiny-embed","input":"x"}`},
		{http.MethodPost, "/api/pull", `{"model":"tiny-a"}`},
	} {
		req, err := http.NewRequest(r.method, "http://"+addr+r.path, strings.NewReader(r.body))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(body), testPassword) {
			t.Errorf("%s %s shows the password: %d %s", r.method, r.path, resp.StatusCode, body)
		}
		if r.path != "/healthz" && resp.StatusCode != http.StatusBadGateway {
			t.Errorf("%s %s: %d %s, want 502", r.method, r.path, resp.StatusCode, body)
		}
	}
}

// Every flag that takes a secret says that a command line is readable by the machine's
// other users, and points to the variable.
func TestSecretFlagsPointToTheVariable(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		args  []string
		flags []string
	}{
		{[]string{"serve", "--help"}, []string{"--auth-token ", "--auth-tokens ", "--ollama-token ", "--nats-password ", "--webhook-secret "}},
		{[]string{"jobs", "list", "--help"}, []string{"--token "}},
		{[]string{"submit", "--help"}, []string{"--token ", "--nats-password "}},
	} {
		r := runCLI(t, nil, nil, nil, c.args...)
		for _, flag := range c.flags {
			i := strings.Index(r.stdout, flag)
			if i < 0 {
				t.Errorf("%v: no %s in\n%s", c.args, flag, r.stdout)
				continue
			}
			line, _, _ := strings.Cut(r.stdout[i:], "\n")
			if !strings.Contains(line, secretFlagNote) {
				t.Errorf("%v: %q does not point to the variable", c.args, line)
			}
		}
	}
}
