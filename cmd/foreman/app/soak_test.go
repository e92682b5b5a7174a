package app_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/cmd/foreman/app"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// soakForeman is one foreman in front of the fake Ollama with models models, webhooks
// allowed to loopback and the dispatcher's delays short, for the soak tests.
type soakForeman struct {
	a    *app.App
	fake *ollamatest.Server
	hook *httptest.Server
	hits atomic.Int64
	base string
	hc   *http.Client
	// embed is the target's embedding model, "" for none.
	embed string
}

func startSoak(t testing.TB, models []string) *soakForeman {
	t.Helper()
	var ms []ollamatest.Model
	for _, m := range models {
		ms = append(ms, ollamatest.Model{Name: m})
	}
	ms = append(ms, ollamatest.Model{Name: soakEmbedModel, Embedding: true})
	s := &soakForeman{fake: ollamatest.New(t, ollamatest.WithModels(ms...), ollamatest.WithTokens(3), ollamatest.WithPullProgress(5)), embed: soakEmbedModel}
	s.hook = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		s.hits.Add(1)
	}))
	t.Cleanup(s.hook.Close)
	a, err := app.Start(context.Background(), app.Config{
		Addr: "127.0.0.1:0", OllamaURL: s.fake.URL, DataDir: t.TempDir(), MaxQueue: 100000,
		PollInterval: 200 * time.Millisecond, WebhookAllowNets: loopback, WebhookSecret: "whsec_c29hay1zb2FrLXNvYWstc29haw==",
	}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_ = a.Shutdown(ctx)
	})
	s.a, s.base = a, "http://"+a.Addr()
	s.hc = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8}}
	t.Cleanup(s.hc.CloseIdleConnections)
	return s
}

var loopback = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}

// do sends one request and returns its status and body; program, when set, is the
// X-Foreman-Program header.
func (s *soakForeman) do(t testing.TB, method, path, program, body string) (int, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, method, s.base+path, strings.NewReader(body))
	if program != "" {
		req.Header.Set("X-Foreman-Program", program)
	}
	resp, err := s.hc.Do(req)
	if err != nil {
		t.Errorf("%s %s: %v", method, path, err)
		return 0, nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// abandon starts a streamed sync call and hangs up after its first line, or before any
// answer when early.
func (s *soakForeman) abandon(t testing.TB, path, program, body string, early bool) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, s.base+path, strings.NewReader(body))
	req.Header.Set("X-Foreman-Program", program)
	resp, err := s.hc.Do(req)
	if err != nil {
		return
	}
	defer resp.Body.Close()
	if early {
		return
	}
	_, _ = bufio.NewReader(resp.Body).ReadString('\n')
}

// soakRound sends one mixed round of traffic: sync calls streamed and not, a stream its
// caller leaves, async jobs with webhooks, a queued job canceled, OpenAI calls, each for
// round's model and program.
func (s *soakForeman) soakRound(t testing.TB, i int, models []string) {
	t.Helper()
	model := models[i%len(models)]
	program := fmt.Sprintf("prog-%d", i%programs)
	chat := func(stream bool) string {
		b, _ := json.Marshal(map[string]any{"model": model, "stream": stream,
			"messages": []map[string]string{{"role": "user", "content": fmt.Sprintf("hi %d", i)}}})
		return string(b)
	}
	switch i % 10 {
	case 0:
		if code, b := s.do(t, http.MethodPost, "/api/chat", program, chat(false)); code != http.StatusOK {
			t.Errorf("chat: %d %s", code, b)
		}
	case 1:
		if code, b := s.do(t, http.MethodPost, "/api/chat", program, chat(true)); code != http.StatusOK {
			t.Errorf("streamed chat: %d %s", code, b)
		}
	case 2:
		s.abandon(t, "/api/chat", program, chat(true), i%12 == 2)
	case 3:
		body := fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"job %d"}],"state_webhook_url":%q,"idempotency_key":"k-%d"}`,
			model, i, s.hook.URL+"/h", i)
		if code, b := s.do(t, http.MethodPost, "/jobs", program, body); code != http.StatusAccepted {
			t.Errorf("/jobs: %d %s", code, b)
		}
	case 4:
		code, b := s.do(t, http.MethodPost, "/jobs", program, fmt.Sprintf(`{"model":%q,"prompt":"p %d"}`, model, i))
		if code != http.StatusAccepted {
			t.Errorf("/jobs: %d %s", code, b)
			return
		}
		var j struct {
			ID string `json:"job_id"`
		}
		_ = json.Unmarshal(b, &j)
		s.do(t, http.MethodDelete, "/jobs/"+j.ID, "", "")
	case 5:
		b, _ := json.Marshal(map[string]any{"model": model, "stream": i%12 == 5,
			"messages": []map[string]string{{"role": "user", "content": "v1"}}})
		if code, body := s.do(t, http.MethodPost, "/v1/chat/completions", program, string(b)); code != http.StatusOK {
			t.Errorf("/v1: %d %s", code, body)
		}
	case 6:
		// An embedding: straight to the target on an embedding model, queued on a chat
		// model (ADR-0053).
		for _, m := range []string{s.embed, model} {
			if m == "" {
				continue
			}
			if code, b := s.do(t, http.MethodPost, "/api/embed", program, fmt.Sprintf(`{"model":%q,"input":"e %d"}`, m, i)); code != http.StatusOK {
				t.Errorf("/api/embed %s: %d %s", m, code, b)
			}
		}
		s.do(t, http.MethodPost, "/v1/embeddings", program, fmt.Sprintf(`{"model":%q,"input":"e"}`, model))
	case 7:
		// A pull the caller leaves after its first line of progress.
		s.abandon(t, "/api/pull", program, fmt.Sprintf(`{"model":%q}`, model), false)
	case 8:
		for _, path := range []string{"/api/tags", "/api/ps", "/api/version", "/v1/models", "/queue", "/healthz", "/metrics", "/jobs?limit=5"} {
			if code, b := s.do(t, http.MethodGet, path, "", ""); code != http.StatusOK {
				t.Errorf("GET %s: %d %s", path, code, b)
			}
		}
		s.do(t, http.MethodPost, "/api/show", "", fmt.Sprintf(`{"model":%q}`, model))
	case 9:
		// A generate the caller leaves before its answer begins.
		b, _ := json.Marshal(map[string]any{"model": model, "prompt": "g", "stream": true})
		s.abandon(t, "/api/generate", program, string(b), true)
	}
}

// settle waits until nothing is queued or running.
func (s *soakForeman) settle(t testing.TB) {
	t.Helper()
	eventually(t, 60*time.Second, "the queue is empty", func() bool {
		code, b := s.do(t, http.MethodGet, "/queue", "", "")
		var q struct {
			Total     int            `json:"total"`
			Elsewhere []any          `json:"waiting_elsewhere"`
			Depth     map[string]int `json:"depth"`
		}
		_ = json.Unmarshal(b, &q)
		return code == http.StatusOK && q.Total == 0 && len(q.Elsewhere) == 0 && len(q.Depth) == 0 && s.fake.InFlight() == 0
	})
}

// goroutinesBack waits until foreman's goroutines number at most want (ownGoroutines),
// and fails t with the count and where the goroutines are if they stay above.
func goroutinesBack(t testing.TB, want int) int {
	t.Helper()
	deadline := time.Now().Add(soakWait)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		n, dump := ownGoroutines()
		if n <= want {
			return n
		}
		if time.Now().After(deadline) {
			t.Fatalf("goroutines: %d, want at most %d\n%s", n, want, summarizeStacks(dump))
		}
		<-tick.C
	}
}

// ownGoroutines counts the goroutines of the test process but the NATS server's: the
// server runs goroutines for each queue consumer, and keeps a consumer an hour after its
// last use (ADR-0027), so a new queue key (model, class, program, load options) adds
// some that stay. What foreman itself starts (and nats.go for it) is counted.
func ownGoroutines() (int, []byte) {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	count := 0
	var own [][]byte
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		if !bytes.Contains(g, []byte("nats-server/v2/server")) {
			count++
			own = append(own, g)
		}
	}
	return count, bytes.Join(own, []byte("\n\n"))
}

// summarizeStacks counts the goroutines of dump by their first frame in foreman's code,
// else by where they were started.
func summarizeStacks(dump []byte) string {
	count := map[string]int{}
	for _, g := range bytes.Split(dump, []byte("\n\n")) {
		lines := strings.Split(string(g), "\n")
		key := ""
		for _, l := range lines[1:] {
			if strings.Contains(l, "foreman/") && !strings.HasPrefix(l, "\t") {
				key = l
				break
			}
		}
		if key == "" {
			for _, l := range lines {
				if strings.HasPrefix(l, "created by ") {
					key = l
				}
			}
		}
		if key == "" && len(lines) > 1 {
			key = lines[1]
		}
		if i := strings.LastIndex(key, "("); i > 0 {
			key = key[:i]
		}
		count[key]++
	}
	var sb strings.Builder
	for _, k := range slices.Sorted(maps.Keys(count)) {
		fmt.Fprintf(&sb, "%5d %s\n", count[k], k)
	}
	return sb.String()
}

func TestSoakGoroutinesReturnToBaseline(t *testing.T) {
	models := []string{"m0:latest", "m1:latest", "m2:latest", "m3:latest"}
	s := startSoak(t, models)
	// Warm: every model known, every kind of call made once.
	for i := range 60 {
		s.soakRound(t, i, models)
	}
	s.settle(t)
	s.hc.CloseIdleConnections()
	base := goroutinesBack(t, 1<<20)
	subs0 := s.a.Conn().NumSubscriptions()

	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	heap0 := ms.HeapAlloc
	n := 600
	if testing.Short() {
		n = 120
	}
	s.soakRounds(t, 60, n, models)
	s.settle(t)
	s.hc.CloseIdleConnections()
	got := goroutinesBack(t, base+slack)
	eventually(t, soakWait, "NATS subscriptions back", func() bool { return s.a.Conn().NumSubscriptions() <= subs0 })
	runtime.GC()
	runtime.ReadMemStats(&ms)
	t.Logf("%d rounds: goroutines %d -> %d; heap %d KiB -> %d KiB", n, base, got, heap0>>10, ms.HeapAlloc>>10)
}

// soakRounds runs rounds from to from+n-1 (soakRound), six callers at once.
func (s *soakForeman) soakRounds(t *testing.T, from, n int, models []string) {
	var wg sync.WaitGroup
	next := make(chan int)
	go func() {
		for i := from; i < from+n; i++ {
			next <- i
		}
		close(next)
	}()
	for range 6 {
		wg.Go(func() {
			for i := range next {
				s.soakRound(t, i, models)
			}
		})
	}
	wg.Wait()
}

// TestSoakAcrossForemen: the calls reach foreman a, whose Mac lacks the model, and run on
// foreman b's; streams cross the NATS.
func TestSoakAcrossForemen(t *testing.T) {
	if testing.Short() {
		t.Skip("waits out the runner's 30 s keep of the streams for resends")
	}
	models := []string{"beta:latest"}
	_, _, fa, fb := alphaBeta(t, allowLoopbackWebhooks, allowLoopbackWebhooks)
	s := &soakForeman{a: fa, base: "http://" + fa.Addr(), hc: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8}}}
	s.fake = ollamatest.New(t) // only for InFlight in settle
	s.hook = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		s.hits.Add(1)
	}))
	t.Cleanup(s.hook.Close)
	for i := range 60 {
		s.soakRound(t, i, models)
	}
	s.settle(t)
	s.hc.CloseIdleConnections()
	base := goroutinesBack(t, 1<<20)
	subsA, subsB := fa.Conn().NumSubscriptions(), fb.Conn().NumSubscriptions()
	n := 300
	s.soakRounds(t, 60, n, models)
	s.settle(t)
	s.hc.CloseIdleConnections()
	got := goroutinesBack(t, base+slack)
	eventually(t, soakWait, "NATS subscriptions back", func() bool {
		return fa.Conn().NumSubscriptions() <= subsA && fb.Conn().NumSubscriptions() <= subsB
	})
	t.Logf("%d rounds: goroutines %d -> %d", n, base, got)
}

// soakWait bounds the wait for the goroutines to go: a runner keeps a sync stream's
// messages for a resend 30 s after the job ends (ADR-0078).
const soakWait = 45 * time.Second

// soakEmbedModel is the fake Ollama's embedding model in the soak tests.
const soakEmbedModel = "e0:latest"

// slack is how many goroutines more than before a soak may stay: a keep-alive
// connection (two goroutines each side) the target's client or the webhooks' keep.
const slack = 8

// programs is how many program names the soak tests' calls name: each program's jobs
// have their own queue consumers, which the server keeps an hour after their last use
// (ADR-0027), each with goroutines of its own; the calls name a few.
const programs = 5

// TestSoakCallersLeaveWhileQueued: while the target holds every answer, sync callers hang
// up with their jobs queued or running, and async jobs are canceled queued or running;
// once the target answers again and the queue is empty, foreman's goroutines and tables
// are back to what they were.
func TestSoakCallersLeaveWhileQueued(t *testing.T) {
	models := []string{"m0:latest", "m1:latest", "m2:latest"}
	s := startSoak(t, models)
	for i := range 60 {
		s.soakRound(t, i, models)
	}
	s.settle(t)
	s.hc.CloseIdleConnections()
	base := goroutinesBack(t, 1<<20)
	subs0 := s.a.Conn().NumSubscriptions()
	rounds := 5
	for r := range rounds {
		release := s.fake.Hold("")
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		const callers = 30
		for i := range callers {
			model := models[i%len(models)]
			wg.Go(func() {
				b, _ := json.Marshal(map[string]any{"model": model, "stream": i%2 == 0,
					"messages": []map[string]string{{"role": "user", "content": fmt.Sprintf("r%d c%d", r, i)}}})
				req, _ := http.NewRequestWithContext(ctx, http.MethodPost, s.base+"/api/chat", bytes.NewReader(b))
				req.Header.Set("X-Foreman-Program", fmt.Sprintf("prog-%d", i%programs))
				if resp, err := s.hc.Do(req); err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			})
		}
		var ids []string
		for i := range callers {
			code, b := s.do(t, http.MethodPost, "/jobs", "", fmt.Sprintf(`{"model":%q,"prompt":"a%d","state_webhook_url":%q}`, models[i%len(models)], i, s.hook.URL))
			if code != http.StatusAccepted {
				t.Fatalf("/jobs: %d %s", code, b)
			}
			var j struct {
				ID string `json:"job_id"`
			}
			_ = json.Unmarshal(b, &j)
			ids = append(ids, j.ID)
		}
		// One job runs (held), the others wait (the async jobs without messages are
		// Ollama's load-only calls, answered at once).
		if err := s.fake.WaitInFlight(context.Background(), 1); err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, "the sync calls queued", func() bool {
			code, b := s.do(t, http.MethodGet, "/queue", "", "")
			var q struct {
				Total int `json:"total"`
			}
			_ = json.Unmarshal(b, &q)
			return code == http.StatusOK && q.Total >= callers
		})
		cancel() // every sync caller hangs up
		for _, id := range ids {
			s.do(t, http.MethodDelete, "/jobs/"+id, "", "")
		}
		wg.Wait()
		release()
		s.settle(t)
	}
	s.hc.CloseIdleConnections()
	got := goroutinesBack(t, base+slack)
	eventually(t, soakWait, "NATS subscriptions back", func() bool { return s.a.Conn().NumSubscriptions() <= subs0 })
	t.Logf("%d rounds of %d callers leaving: goroutines %d -> %d", rounds, 2*30, base, got)
}
