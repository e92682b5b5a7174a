package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// End-to-end tests of the queued routes against a real Ollama (see
// ../shared/realollama): FOREMAN_TEST_OLLAMA_URL names it; its log, for counting model
// loads, is FOREMAN_TEST_OLLAMA_LOG or $HOME/.cache/foreman-realollama/logs/ollama-PORT.log.
// They do not run in parallel: load counts and timing belong to one test at a time.

type e2eBundle struct {
	URL    string // foreman
	Target string // Ollama
	Store  *broker.Store
	Conn   *nats.Conn // under Store
	Inv    *ollama.Inventory
	log    string

	startWorker func()
}

func newE2EBundle(t *testing.T, wcfg func(*worker.Config)) *e2eBundle {
	t.Helper()
	target := ollamatest.RealOllama(t)
	b := &e2eBundle{Target: strings.TrimSuffix(target, "/"), log: os.Getenv("FOREMAN_TEST_OLLAMA_LOG")}
	if b.log == "" {
		if u, err := url.Parse(target); err == nil {
			home, _ := os.UserHomeDir()
			b.log = filepath.Join(home, ".cache", "foreman-realollama", "logs", "ollama-"+u.Port()+".log")
		}
	}
	br := brokertest.New(t)
	client, err := ollama.NewClient(ollama.ClientConfig{BaseURL: target})
	if err != nil {
		t.Fatal(err)
	}
	b.Store, b.Conn = br.Store, br.Conn
	b.Inv = ollama.NewInventory(ollama.InventoryConfig{Client: client, Interval: time.Hour})
	gw, err := New(Config{Store: br.Store, Target: client, Inventory: b.Inv})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(gw)
	t.Cleanup(hs.Close)
	b.URL = hs.URL
	cfg := worker.Config{Store: br.Store, Target: client, Inventory: b.Inv, RetryDelay: 50 * time.Millisecond, IdlePoll: 50 * time.Millisecond}
	if wcfg != nil {
		wcfg(&cfg)
	}
	// The worker starts once the caller has warmed the target (see warm), so it sees the
	// loaded model in /api/ps.
	b.startWorker = func() { startQueuedWorker(t, cfg) }
	return b
}

// warm loads model on the target directly, refreshes the inventory (so /api/ps shows it
// loaded) and starts the worker.
func (b *e2eBundle) warm(t *testing.T, ctx context.Context, model string) {
	t.Helper()
	r := post(t, ctx, b.Target, "/api/generate", fmt.Appendf(nil, `{"model":%q,"prompt":"hi","stream":false,"options":{"temperature":0,"num_predict":1}}`, model))
	if r.Status != 200 {
		t.Fatalf("warm %s: %d %s", model, r.Status, r.Body)
	}
	if err := b.Inv.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if b.startWorker != nil {
		b.startWorker()
		b.startWorker = nil
	}
}

// loads counts model loads so far ("starting runner" lines in the Ollama log); ok is
// false when the log cannot be read.
func (b *e2eBundle) loads(t *testing.T) (n int, ok bool) {
	t.Helper()
	data, err := os.ReadFile(b.log)
	if err != nil {
		return 0, false
	}
	return bytes.Count(data, []byte("starting runner")), true
}

func greedyBody(path, model, prompt, stream string, numPredict int) []byte {
	opts := fmt.Sprintf(`"options":{"temperature":0,"num_predict":%d}`, numPredict)
	if path == "/api/generate" {
		return fmt.Appendf(nil, `{"model":%q,"prompt":%q,"stream":%s,%s}`, model, prompt, stream, opts)
	}
	return fmt.Appendf(nil, `{"model":%q,"messages":[{"role":"user","content":%q}],"stream":%s,%s}`, model, prompt, stream, opts)
}

func sampledBody(model, prompt string, numPredict, seed int) []byte {
	return fmt.Appendf(nil, `{"model":%q,"prompt":%q,"stream":false,"options":{"temperature":0.8,"seed":%d,"num_predict":%d}}`,
		model, prompt, seed, numPredict)
}

// contentFields are compared between a direct and a relayed answer; timestamps,
// durations and counts depend on timing and caches.
var contentFields = []string{"model", "message", "response", "thinking", "done", "done_reason", "error"}

// sameAnswer compares two Ollama NDJSON or JSON bodies line by line: the same set of
// fields on each line and the same content fields.
func sameAnswer(t *testing.T, name string, direct, via []byte) {
	t.Helper()
	dl := bytes.Split(bytes.TrimSpace(direct), []byte("\n"))
	vl := bytes.Split(bytes.TrimSpace(via), []byte("\n"))
	if len(dl) != len(vl) {
		t.Errorf("%s: %d lines through foreman, %d direct\nforeman: %s\ndirect: %s", name, len(vl), len(dl), via, direct)
		return
	}
	for i := range dl {
		var d, v map[string]json.RawMessage
		if err := json.Unmarshal(dl[i], &d); err != nil {
			t.Fatalf("%s: direct line %d: %v", name, i, err)
		}
		if err := json.Unmarshal(vl[i], &v); err != nil {
			t.Fatalf("%s: foreman line %d %q: %v", name, i, vl[i], err)
		}
		dk, vk := keys(d), keys(v)
		if !slices.Equal(dk, vk) {
			t.Errorf("%s line %d: fields %v through foreman, %v direct", name, i, vk, dk)
		}
		for _, f := range contentFields {
			if !bytes.Equal(d[f], v[f]) {
				t.Errorf("%s line %d: %s = %s through foreman, %s direct", name, i, f, v[f], d[f])
			}
		}
	}
}

func keys(m map[string]json.RawMessage) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func TestE2EQueuedMatchesDirect(t *testing.T) {
	b := newE2EBundle(t, nil)
	ctx := testCtx(t, 2*time.Minute)
	b.warm(t, ctx, "tiny-a")
	for _, path := range []string{"/api/chat", "/api/generate"} {
		for _, stream := range []string{"true", "false"} {
			body := greedyBody(path, "tiny-a", "tell me about the sea", stream, 24)
			via := post(t, ctx, b.URL, path, body)
			direct := post(t, ctx, b.Target, path, body)
			name := path + " stream=" + stream
			if via.Status != 200 || direct.Status != 200 || via.CType != direct.CType {
				t.Fatalf("%s: foreman %d %q %s, direct %d %q %s", name, via.Status, via.CType, via.Body, direct.Status, direct.CType, direct.Body)
			}
			if via.Header.Get(HeaderJobID) == "" {
				t.Errorf("%s: no %s", name, HeaderJobID)
			}
			sameAnswer(t, name, direct.Body, via.Body)
		}
	}
	// The embedding model's 400 is Ollama's own.
	body := greedyBody("/api/chat", "tiny-embed", "hi", "false", 4)
	via, direct := post(t, ctx, b.URL, "/api/chat", body), post(t, ctx, b.Target, "/api/chat", body)
	if via.Status != 400 || direct.Status != 400 || errorBody(t, via.Body) != errorBody(t, direct.Body) {
		t.Errorf("embedding model: foreman %d %s, direct %d %s", via.Status, via.Body, direct.Status, direct.Body)
	}
}

// The OpenAI-compatible chat and completion, the Responses API and the Anthropic message
// without stream (their default), which the worker calls streamed and assembles
// (ADR-0050), answer what Ollama answers: the same bytes but for the ids (random ones per
// request) and the seconds of "created" ("created_at", "completed_at"), with Ollama's
// Content-Type.
func TestE2EOpenAINonStreamedMatchesDirect(t *testing.T) {
	b := newE2EBundle(t, nil)
	ctx := testCtx(t, 2*time.Minute)
	b.warm(t, ctx, "tiny-a")
	id := regexp.MustCompile(`"id":"[^"]*","object":"([^"]*)","created":\d+,`)
	msgID := regexp.MustCompile(`^\{"id":"msg_[0-9a-f]*",`)
	responseVars := regexp.MustCompile(`"(id|created_at|completed_at)":("(resp|msg)_\d+"|\d+)`) // random ids, times
	for _, tt := range []struct{ path, body string }{
		{"/v1/chat/completions", `{"model":"tiny-a","messages":[{"role":"user","content":"<tell> me & the sea"}],"max_tokens":12,"temperature":0,"logprobs":true,"top_logprobs":2}`},
		{"/v1/completions", `{"model":"tiny-a","prompt":"tell me about the sea","max_tokens":12,"temperature":0}`},
		{"/v1/messages", `{"model":"tiny-a","max_tokens":12,"temperature":0,"messages":[{"role":"user","content":"<tell> me & the sea"}]}`},
		{"/v1/responses", `{"model":"tiny-a","instructions":"be brief","input":[{"role":"user","content":[{"type":"input_text","text":"<tell> me & the sea"}]}],"max_output_tokens":12,"temperature":0,"top_p":0.5,"reasoning":{"effort":"low"},"text":{"format":{"type":"json_schema","name":"x","schema":{"type":"object","required":["b","a"]}}}}`},
		{"/v1/responses", `{"model":"tiny-a","input":"tell me about the sea","max_output_tokens":12,"temperature":0}`},
		{"/v1/responses", `{"model":"tiny-a"}`}, // no input: an empty answer
	} {
		via := post(t, ctx, b.URL, tt.path, []byte(tt.body))
		direct := post(t, ctx, b.Target, tt.path, []byte(tt.body))
		if via.Status != 200 || direct.Status != 200 || via.CType != direct.CType {
			t.Fatalf("%s: foreman %d %q %s, direct %d %q %s", tt.path, via.Status, via.CType, via.Body, direct.Status, direct.CType, direct.Body)
		}
		v, d := id.ReplaceAll(via.Body, []byte(`"object":"$1",`)), id.ReplaceAll(direct.Body, []byte(`"object":"$1",`))
		switch tt.path {
		case "/v1/messages":
			v, d = msgID.ReplaceAll(via.Body, nil), msgID.ReplaceAll(direct.Body, nil)
		case "/v1/responses":
			v, d = responseVars.ReplaceAll(via.Body, []byte(`"$1":`)), responseVars.ReplaceAll(direct.Body, []byte(`"$1":`))
		}
		if !bytes.Equal(v, d) || bytes.Equal(v, via.Body) {
			t.Errorf("%s: through foreman\n %s\ndirect\n %s", tt.path, via.Body, direct.Body)
		}
	}
}

// A greedy generation on the tiny models soon repeats one token, and Ollama stops it after
// 31 of them: its stream just stops, without its end, and its non-streamed answer is a 200
// with the text so far as a response that is not done: on the OpenAI-compatible routes no
// finish_reason and a usage of zeros, a message without stop_reason and with zero usage,
// a "completed" Response with zero usage. The worker calls such a chat streamed and
// answers what Ollama answers (not a 500 for a cut stream, which the openai and Anthropic
// SDKs would retry twice, generating it three times), the same bytes but for the random
// ids and the seconds of "created_at" and "completed_at".
func TestE2EOpenAIRepeatStopMatchesDirect(t *testing.T) {
	b := newE2EBundle(t, nil)
	ctx := testCtx(t, 2*time.Minute)
	b.warm(t, ctx, "tiny-a")
	id := regexp.MustCompile(`"id":"[^"]*","object":"([^"]*)","created":\d+,`)
	msgID := regexp.MustCompile(`^\{"id":"msg_[0-9a-f]*",`)
	responseVars := regexp.MustCompile(`"(id|created_at|completed_at)":("(resp|msg)_\d+"|\d+)`)
	for _, tt := range []struct{ path, body, stopped string }{
		{"/v1/chat/completions", `{"model":"tiny-a","messages":[{"role":"user","content":"a b c"}],"max_tokens":100,"temperature":0}`, `"finish_reason":null`},
		{"/v1/completions", `{"model":"tiny-a","prompt":"a b c","max_tokens":100,"temperature":0}`, `"finish_reason":null`},
		{"/v1/messages", `{"model":"tiny-a","max_tokens":100,"temperature":0,"messages":[{"role":"user","content":"a b c"}]}`, `"usage":{"input_tokens":0,"output_tokens":0}}`},
		{"/v1/responses", `{"model":"tiny-a","input":"a b c","max_output_tokens":100,"temperature":0}`, `"usage":{"input_tokens":0,"output_tokens":0,`},
		// Other text before the repeats (control characters among it), and the settings a
		// Response echoes.
		{"/v1/messages", `{"model":"tiny-a","max_tokens":100,"temperature":0,"system":"x","messages":[{"role":"user","content":"a b c"}]}`, `"usage":{"input_tokens":0,"output_tokens":0}}`},
		{"/v1/responses", `{"model":"tiny-a","instructions":"x","input":"a b c","max_output_tokens":100,"temperature":0,"top_p":0.5,"reasoning":{"effort":"low"}}`, `"usage":{"input_tokens":0,"output_tokens":0,`},
	} {
		direct := post(t, ctx, b.Target, tt.path, []byte(tt.body))
		if direct.Status != 200 || !bytes.Contains(direct.Body, []byte(tt.stopped)) {
			t.Fatalf("%s: Ollama's answer %d %s is not one of a generation stopped for a repeated token", tt.path, direct.Status, direct.Body)
		}
		via := post(t, ctx, b.URL, tt.path, []byte(tt.body))
		var v, d []byte
		switch tt.path {
		case "/v1/messages":
			v, d = msgID.ReplaceAll(via.Body, nil), msgID.ReplaceAll(direct.Body, nil)
		case "/v1/responses":
			v, d = responseVars.ReplaceAll(via.Body, []byte(`"$1":`)), responseVars.ReplaceAll(direct.Body, []byte(`"$1":`))
		default:
			v, d = id.ReplaceAll(via.Body, []byte(`"object":"$1",`)), id.ReplaceAll(direct.Body, []byte(`"object":"$1",`))
		}
		if via.Status != 200 || via.CType != direct.CType || !bytes.Equal(v, d) || bytes.Equal(v, via.Body) {
			t.Errorf("%s: through foreman %d %q\n %s\ndirect %q\n %s", tt.path, via.Status, via.CType, via.Body, direct.CType, direct.Body)
		}
	}
}

// A stream that ends without done:true (long greedy outputs on the tiny models) is
// relayed as it is and the request ends.
func TestE2EStreamWithoutDone(t *testing.T) {
	b := newE2EBundle(t, nil)
	ctx := testCtx(t, 2*time.Minute)
	b.warm(t, ctx, "tiny-a")
	// Measured on Ollama 0.17.4: this prompt stops after 31 lines, without done:true.
	body := greedyBody("/api/generate", "tiny-a", "a b c", "true", 100)
	via := post(t, ctx, b.URL, "/api/generate", body)
	direct := post(t, ctx, b.Target, "/api/generate", body)
	if via.Status != 200 {
		t.Fatalf("foreman: %d %s", via.Status, via.Body)
	}
	sameAnswer(t, "long greedy stream", direct.Body, via.Body)
	t.Logf("direct stream ended with done:true: %v", bytes.Contains(direct.Body, []byte(`"done":true`)))
}

// A backlog of interleaved tiny-a / tiny-b requests behind a long tiny-a job runs all
// tiny-a work first: at most 2 loads where Ollama alone may swap up to 6 times.
func TestE2EBacklogDrainsByModel(t *testing.T) {
	// The waiting bound is left out of it (TestE2EStarvationBound has it): on a loaded
	// machine the long job may run past the default, and the bound rightly lets tiny-b go.
	b := newE2EBundle(t, func(c *worker.Config) { c.MaxWait = time.Hour })
	ctx := testCtx(t, 3*time.Minute)
	b.warm(t, ctx, "tiny-a")
	states := watchStates(t, b.Conn)
	before, haveLog := b.loads(t)

	longDone := make(chan rawResponse, 1)
	go func() {
		longDone <- post(t, ctx, b.URL, "/api/generate", sampledBody("tiny-a", "a long story", 1500, 7))
	}()
	long := waitState(t, ctx, states, "long job running", func(j *broker.Job) bool {
		return j.Model == "tiny-a" && (j.State == broker.StateWorking || j.State == broker.StateLoading)
	})

	order := []string{"tiny-b", "tiny-a", "tiny-b", "tiny-a", "tiny-b", "tiny-a"}
	var wg sync.WaitGroup
	res := make([]rawResponse, len(order))
	for i, model := range order {
		wg.Go(func() {
			res[i] = post(t, ctx, b.URL, "/api/generate", sampledBody(model, fmt.Sprint("backlog ", i), 16, i))
		})
		// Arrive in this order: wait until the job is queued before sending the next.
		waitState(t, ctx, states, "backlog job queued", func(j *broker.Job) bool {
			return j.State == broker.StateQueued && j.Model == model && j.ID != long.ID
		})
	}
	if j, _, err := b.Store.Get(ctx, long.ID); err != nil || j.State.Terminal() {
		t.Fatalf("the long job ended before the backlog was queued (%v, %v): make it longer", j, err)
	}
	wg.Wait()
	if r := <-longDone; r.Status != 200 {
		t.Fatalf("long job: %d %s", r.Status, r.Body)
	}

	started := make([]time.Time, len(order))
	for i, r := range res {
		if r.Status != 200 {
			t.Fatalf("backlog %d: %d %s", i, r.Status, r.Body)
		}
		j, _, err := b.Store.Get(ctx, r.Header.Get(HeaderJobID))
		if err != nil || j.StartedAt == nil {
			t.Fatalf("backlog %d: %+v %v", i, j, err)
		}
		started[i] = *j.StartedAt
	}
	var lastA, firstB time.Time
	for i, model := range order {
		if model == "tiny-a" && started[i].After(lastA) {
			lastA = started[i]
		}
		if model == "tiny-b" && (firstB.IsZero() || started[i].Before(firstB)) {
			firstB = started[i]
		}
	}
	if !lastA.Before(firstB) {
		t.Errorf("a tiny-b job started before the last tiny-a job: starts %v", started)
	}
	if after, ok := b.loads(t); ok && haveLog {
		t.Logf("model loads during the backlog: %d", after-before)
		if after-before > 2 {
			t.Errorf("%d model loads, want at most 2", after-before)
		}
	} else {
		t.Logf("Ollama log %s not readable: loads not counted", b.log)
	}
}

// While three clients keep tiny-a busy, one tiny-b request is served within the
// starvation bound: it finishes while tiny-a traffic is still flowing (without the bound
// it would wait until that traffic stopped, which here never happens before it is served).
func TestE2EStarvationBound(t *testing.T) {
	b := newE2EBundle(t, func(c *worker.Config) {
		c.MaxWait = time.Second
		c.MaxConsecutive = 1000
	})
	ctx := testCtx(t, 3*time.Minute)
	b.warm(t, ctx, "tiny-a")

	var mu sync.Mutex
	var aDone []time.Time
	countAfter := func(t0 time.Time) int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, d := range aDone {
			if d.After(t0) {
				n++
			}
		}
		return n
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for c := range 3 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				r := post(t, ctx, b.URL, "/api/generate", sampledBody("tiny-a", fmt.Sprintf("client %d turn %d", c, i), 32, c*1000+i))
				if r.Status != 200 {
					t.Errorf("tiny-a client %d: %d %s", c, r.Status, r.Body)
					return
				}
				mu.Lock()
				aDone = append(aDone, time.Now())
				mu.Unlock()
			}
		})
	}
	defer func() { close(stop); wg.Wait() }()

	waitUntil(t, ctx, "tiny-a traffic flowing", func() bool { return countAfter(time.Time{}) >= 3 })
	r := post(t, ctx, b.URL, "/api/generate", sampledBody("tiny-b", "let me in", 16, 1))
	bDone := time.Now()
	if r.Status != 200 {
		t.Fatalf("tiny-b: %d %s", r.Status, r.Body)
	}
	waitUntil(t, ctx, "tiny-a traffic still flowing after tiny-b", func() bool { return countAfter(bDone) >= 1 })
}

// waitUntil polls cond until it holds or ctx ends.
func waitUntil(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v", what, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}
