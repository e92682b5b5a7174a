package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/cmd/foreman/app"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// testApp starts foreman on a free port and a temporary data dir in front of target, with
// extra FOREMAN_* settings; it shuts down when the test ends.
func testApp(t *testing.T, target string, env map[string]string) *app.App {
	t.Helper()
	all := map[string]string{
		"FOREMAN_ADDR": "127.0.0.1:0", "FOREMAN_DATA_DIR": t.TempDir(), "FOREMAN_OLLAMA_URL": target,
	}
	for k, v := range env {
		all[k] = v
	}
	cfg, err := parseConfig(t, nil, all)
	if err != nil {
		t.Fatal(err)
	}
	a, err := app.Start(context.Background(), cfg.Config, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("app.Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = a.Shutdown(ctx)
	})
	return a
}

// waitFor checks cond at once and then every 10ms until it holds; it fails t if 15s pass
// first. cond runs on the test's goroutine and may call t.Fatal.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	timeout := time.After(15 * time.Second)
	for !cond() {
		select {
		case <-tick.C:
		case <-timeout:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func getHealthz(t *testing.T, addr string) (int, map[string]any) {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var h map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, h
}

func TestStartAppServesHealthzAndShutsDownTwice(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	a := testApp(t, fake.URL, nil)
	waitFor(t, "the first poll", func() bool { return a.Inventory().Snapshot().Polled })
	code, h := getHealthz(t, a.Addr())
	if code != 200 || h["status"] != "ok" || h["degraded"] != false {
		t.Fatalf("/healthz: %d %v", code, h)
	}
	resp, err := http.Get("http://" + a.Addr() + "/api/tags")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Contains(body, []byte("tiny-a:latest")) {
		t.Fatalf("/api/tags: %d %s", resp.StatusCode, body)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := a.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if err := a.Shutdown(ctx); err != nil {
		t.Fatalf("second shutdown: %v", err)
	}
	if _, err := http.Get("http://" + a.Addr() + "/healthz"); err == nil {
		t.Fatal("still serving after shutdown")
	}
	// The data dir is free again: a new foreman can take it.
	cfg := a.Config()
	b, err := app.Start(context.Background(), cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("restart on the same data dir: %v", err)
	}
	if err := b.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
}

// /healthz is 200 and says degraded while the target is down.
func TestStartAppTargetDown(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	fake.SetDown(true)
	a := testApp(t, fake.URL, map[string]string{"FOREMAN_POLL_INTERVAL": "100ms"})
	waitFor(t, "a failed poll", func() bool { return a.Inventory().Degraded() })
	code, h := getHealthz(t, a.Addr())
	if code != 200 || h["status"] != "degraded" || h["degraded"] != true {
		t.Fatalf("/healthz: %d %v", code, h)
	}
}

func TestSecondAppOnSameDataDirFails(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	a := testApp(t, fake.URL, nil)
	cfg := a.Config()
	cfg.Addr = "127.0.0.1:0"
	b, err := app.Start(context.Background(), cfg, slog.New(slog.DiscardHandler))
	if err == nil {
		_ = b.Shutdown(context.Background())
		t.Fatal("a second foreman started on a data dir in use")
	}
	if !strings.Contains(err.Error(), "in use") || !strings.Contains(err.Error(), a.DataDir()) {
		t.Fatalf("error %q does not say the data dir %s is in use", err, a.DataDir())
	}
	// The first one is unharmed.
	if code, h := getHealthz(t, a.Addr()); code != 200 || h["nats"] != "ok" {
		t.Fatalf("first app after the refused second: %d %v", code, h)
	}
}

// embedRecorder sits between foreman and the fake and keeps every /api/embed body.
type embedRecorder struct {
	mu     sync.Mutex
	bodies []map[string]any
}

func (r *embedRecorder) warmCalls(model string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, b := range r.bodies {
		if b["model"] == model && b["keep_alive"] == float64(-1) {
			n++
		}
	}
	return n
}

func newEmbedRecorder(t *testing.T, target string) (*embedRecorder, string) {
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	rec := &embedRecorder{}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.FlushInterval = -1
	rp.ErrorLog = log.New(io.Discard, "", 0) // the proxy's 502s while the fake is down are expected
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if r.URL.Path == "/api/embed" {
			var m map[string]any
			_ = json.Unmarshal(body, &m)
			rec.mu.Lock()
			rec.bodies = append(rec.bodies, m)
			rec.mu.Unlock()
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return rec, srv.URL
}

// FOREMAN_EMBED_MODEL is loaded with keep_alive -1 at start and again after the target
// comes back from being down.
func TestWarmEmbedderAtStartAndRecovery(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	rec, proxyURL := newEmbedRecorder(t, fake.URL)
	a := testApp(t, proxyURL, map[string]string{"FOREMAN_EMBED_MODEL": "tiny-embed", "FOREMAN_POLL_INTERVAL": "100ms"})
	waitFor(t, "the warm-up embed at start", func() bool { return rec.warmCalls("tiny-embed") >= 1 })

	fake.SetDown(true)
	waitFor(t, "the target to be seen down", func() bool { return a.Inventory().Degraded() })
	before := rec.warmCalls("tiny-embed")
	fake.SetDown(false)
	waitFor(t, "the warm-up embed after recovery", func() bool { return rec.warmCalls("tiny-embed") > before })
	waitFor(t, "recovery", func() bool { return !a.Inventory().Degraded() })
}

// A warm-up lasts as long as the embedding model's load: on a busy Mac (a generation
// ahead of it in Ollama's queue) or a wedged one, minutes, up to the first-byte limit. It
// does not hold the poll that saw the target come back: every Refresh shares that poll
// (the worker's probe, the gateway's outage check), and each would take the target that
// just answered for one that answers nothing, keeping the worker paused meanwhile.
func TestWarmEmbedderDoesNotHoldThePoll(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	fake.FailNextOn("/api/embed", 1, ollamatest.Hang) // the load never ends
	a := testApp(t, fake.URL, map[string]string{"FOREMAN_EMBED_MODEL": "tiny-embed"})
	waitFor(t, "the warm-up embed at start", func() bool {
		return slices.ContainsFunc(fake.Calls(), func(c ollamatest.Call) bool { return c.Path == "/api/embed" && !c.Finished })
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Inventory().Refresh(ctx); err != nil {
		t.Fatalf("a poll while the warm-up loads: %v", err)
	}
	if !a.Inventory().Reachable() {
		t.Fatal("the target is not reachable after a poll it answered")
	}
}

// Without FOREMAN_EMBED_MODEL nothing is warmed.
func TestNoEmbedModelNoWarmUp(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	rec, proxyURL := newEmbedRecorder(t, fake.URL)
	a := testApp(t, proxyURL, nil)
	waitFor(t, "the first poll", func() bool { return a.Inventory().Snapshot().Polled })
	// Without the model no warm-up runs at all: a poll answered is all there is to wait for.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Inventory().Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.bodies) != 0 {
		t.Fatalf("embed calls without FOREMAN_EMBED_MODEL: %v", rec.bodies)
	}
}

// serve hands the bound loopback address to the gateway: a rebound name is refused, the
// address itself is served.
func TestServeHostCheckOnLoopback(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	a := testApp(t, fake.URL, nil)
	for host, want := range map[string]int{"evil.example": 403, a.Addr(): 200, "localhost": 200} {
		req, err := http.NewRequest(http.MethodGet, "http://"+a.Addr()+"/healthz", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = host
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("Host %s: %d %s, want %d", host, resp.StatusCode, body, want)
		}
	}
}
