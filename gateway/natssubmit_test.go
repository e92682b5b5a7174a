package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/natsd"
)

// logRecorder keeps the messages logged at Warn and above.
type logRecorder struct {
	mu   sync.Mutex
	msgs []string
}

func (r *logRecorder) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	var b strings.Builder
	b.WriteString(rec.Message)
	rec.Attrs(func(a slog.Attr) bool { b.WriteString(" " + a.String()); return true })
	r.mu.Lock()
	r.msgs = append(r.msgs, b.String())
	r.mu.Unlock()
	return nil
}
func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *logRecorder) WithGroup(string) slog.Handler      { return r }

func (r *logRecorder) count(substr string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, m := range r.msgs {
		if strings.Contains(m, substr) {
			n++
		}
	}
	return n
}

// A submit whose reply subject is not an inbox gets no answer: answering would publish with
// foreman's rights wherever the sender pointed (a job record, the queue). Requests from the
// client account arrive with the server's import reply subject and are answered.
func TestNATSSubmitRefusesForgedReplySubjects(t *testing.T) {
	t.Parallel()
	logs := &logRecorder{}
	b := newTestBundle(t,
		withGateway(func(c *Config) { c.Logger = slog.New(logs) }),
		withBroker(brokertest.WithNATS(func(c *natsd.Config) {
			c.Listen, c.ClientUser, c.ClientPassword = "127.0.0.1:0", "watcher", "s3cret"
		})))
	ctx := testCtx(t, 30*time.Second)
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- b.GW.RunNATSSubmit(runCtx) }()
	stopped := false
	stopSubmit := func() {
		if !stopped {
			stopped = true
			stop()
			if err := <-done; err != nil {
				t.Errorf("RunNATSSubmit: %v", err)
			}
		}
	}
	t.Cleanup(stopSubmit)

	st, nc := b.Broker.Store, b.Broker.Conn
	const body = `{"model":"tiny-a","prompt":"x","kind":"generate"}`
	submit := func(conn *nats.Conn) string {
		t.Helper()
		for {
			m, err := conn.RequestWithContext(ctx, broker.SubmitSubject, []byte(body))
			if err != nil && strings.Contains(err.Error(), "no responders") {
				continue // the responder is still subscribing
			}
			if err != nil {
				t.Fatalf("submit: %v", err)
			}
			var r submitReply
			if err := json.Unmarshal(m.Data, &r); err != nil || r.JobID == "" {
				t.Fatalf("submit reply %s (%v)", m.Data, err)
			}
			return r.JobID
		}
	}
	first := submit(nc) // an _INBOX. reply on foreman's own connection
	_, rev, err := st.Get(ctx, first)
	if err != nil {
		t.Fatal(err)
	}
	client, err := nats.Connect(b.Broker.Server.ClientURL(), nats.UserInfo("watcher", "s3cret"), nats.Timeout(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	submit(client) // through the service import
	queued, err := st.QueueLen(ctx)
	if err != nil {
		t.Fatal(err)
	}

	token, _ := broker.ModelToken("tiny-a")
	forged := []string{
		"$KV." + broker.JobsBucket + ".job." + first,
		broker.QueueSubject(token),
		"foreman.job." + first + ".state",
		"_INBOX.>",
		"_INBOX..x",
	}
	for _, reply := range forged {
		if err := nc.PublishRequest(broker.SubmitSubject, reply, []byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	// The responder took the forged ones from its subscription before this one (one
	// connection, one subscription: in order); stopping it waits for all its answers.
	last := submit(nc)
	stopSubmit()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if j, revAfter, err := st.Get(ctx, first); err != nil || revAfter != rev || j.State != broker.StateQueued {
		t.Fatalf("job record changed by a forged reply: %+v rev %d→%d (%v)", j, rev, revAfter, err)
	}
	if n, err := st.QueueLen(ctx); err != nil || n != queued+1 {
		t.Fatalf("queue holds %d jobs, want %d (the last submit only): %v", n, queued+1, err)
	}
	if _, _, err := st.Get(ctx, last); err != nil {
		t.Fatalf("the last submit: %v", err)
	}
	// Logged, but not once each: any client may send a flood of them (TestRefusalLogLimit).
	if n := logs.count("not an inbox refused"); n < 1 || n >= len(forged) {
		t.Fatalf("%d refusals logged for %d forged replies, want at least one and fewer: %q", n, len(forged), logs.msgs)
	}
}

// With named tokens, a NATS submit (no token proved) may not name a token's program: it
// would eat that program's per-program limit and turns.
func TestNATSSubmitRefusesNamedProgram(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t, withGateway(func(c *Config) { c.AuthTokens = []NamedToken{{Program: "alice", Token: "tokenA"}} }))
	ctx := testCtx(t, 30*time.Second)
	got := b.GW.answerSubmit(ctx, broker.SubmitRequest{Data: []byte(`{"model":"tiny-a","prompt":"x","kind":"generate","program":"alice"}`)})
	if got.Status != 403 || got.Error != `program "alice" belongs to a named token` || got.JobID != "" {
		t.Fatalf("submit as alice: %+v", got)
	}
	raw, err := json.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"error":"program \"alice\" belongs to a named token","status":403}`; string(raw) != want {
		t.Fatalf("reply %s, want %s", raw, want)
	}
	if got := b.GW.answerSubmit(ctx, broker.SubmitRequest{Data: []byte(`{"model":"tiny-a","prompt":"x","kind":"generate","program":"bob"}`)}); got.JobID == "" {
		t.Fatalf("submit as bob: %+v", got)
	}
}

// A NATS submit is bounded by the body limit as a POST /jobs is: a body at the limit is
// queued, one a byte longer is a 413.
func TestNATSSubmitBodyLimit(t *testing.T) {
	t.Parallel()
	const limit = 1024
	b := newTestBundle(t, withGateway(func(c *Config) { c.MaxBodyBytes = limit }))
	runNATSSubmit(t, b)
	if r := natsSubmit(t, b, string(paddedBody(t, `{"model":"tiny-a",`, limit))); r.JobID == "" {
		t.Fatalf("a body of %d bytes: %+v", limit, r)
	}
	if r := natsSubmit(t, b, string(paddedBody(t, `{"model":"tiny-a",`, limit+1))); r.Status != 413 || r.JobID != "" {
		t.Fatalf("a body of %d bytes: %+v, want 413", limit+1, r)
	}
}

// NATS keeps a header name as it was sent and nats.Header.Get matches it exactly; a client
// used to HTTP sends "idempotency-key". Any spelling is the Idempotency-Key, as over HTTP.
func TestNATSSubmitIdempotencyKeyInAnyCase(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	runNATSSubmit(t, b)
	const body = `{"model":"tiny-a","prompt":"x","kind":"generate"}`
	// withKey is a request whose header names are kept as given, as a client library that
	// writes them as it was handed them does.
	withKey := func(pairs ...string) *nats.Msg {
		m := &nats.Msg{Data: []byte(body), Header: nats.Header{}}
		for i := 0; i < len(pairs); i += 2 {
			m.Header[pairs[i]] = append(m.Header[pairs[i]], pairs[i+1])
		}
		return m
	}
	first := natsSubmitMsg(t, b, withKey("idempotency-key", "order-7"))
	if first.JobID == "" {
		t.Fatalf("first submit: %+v", first)
	}
	for _, name := range []string{"idempotency-key", "IDEMPOTENCY-KEY", "Idempotency-Key"} {
		if got := natsSubmitMsg(t, b, withKey(name, "order-7")); got.JobID != first.JobID {
			t.Errorf("retry with %q: %+v, want job %s again", name, got, first.JobID)
		}
	}
	// The same key under two spellings is one key; two keys are a 400, not a guess.
	if got := natsSubmitMsg(t, b, withKey("idempotency-key", "order-7", "Idempotency-Key", "order-7")); got.JobID != first.JobID {
		t.Errorf("the key under two spellings: %+v, want job %s again", got, first.JobID)
	}
	got := natsSubmitMsg(t, b, withKey("idempotency-key", "order-7", "Idempotency-Key", "order-8"))
	if got.Status != 400 || got.JobID != "" || !strings.Contains(got.Error, "Idempotency-Key") {
		t.Errorf("two different keys: %+v, want a 400", got)
	}
	if n, err := b.Broker.Store.QueueLen(testCtx(t, 10*time.Second)); err != nil || n != 1 {
		t.Errorf("queue holds %d jobs (%v), want 1", n, err)
	}
}

// A refused NATS submit quotes little of what it was sent. json.Unmarshal turns each
// invalid UTF-8 byte into U+FFFD (3 bytes), so an error that quoted a value whole could be
// three times the request and more than a NATS message may hold: the reply was never sent,
// and the client got a timeout instead of its 400.
func TestNATSSubmitRefusalQuotesLittleOfTheRequest(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	runNATSSubmit(t, b)
	junk := strings.Repeat("\xff", 360<<10)
	for _, c := range []struct{ body, want string }{
		{`{"model":"tiny-a","kind":"` + junk + `"}`, `unknown kind "`},
		// On generate: a chat's is "model is required", as its sync route answers it,
		// which quotes nothing.
		{`{"kind":"generate","model":"` + junk + `"}`, `invalid model name "`},
		{`{"model":"\u0001` + junk + `"}`, `invalid model name "\x01`},
		{`{"model":"tiny-a","messages":[],"state_webhook_url":"` + junk + `"}`, `state_webhook_url: longer than 2048 bytes`},
		{`{"model":"tiny-a","messages":[],"state_webhook_url":"http://127.0.0.1:9/","webhook_events":["` + junk + `"]}`, `webhook_events: unknown state "`},
		{`{"model":"tiny-a","messages":[],"priority":"` + junk + `"}`, `"priority": priority of `},
		{`{"model":"tiny-a","messages":[],"program":"` + junk + `"}`, `"program": `},
	} {
		got := natsSubmitMsg(t, b, &nats.Msg{Data: []byte(c.body)})
		if got.Status != 400 || got.JobID != "" || !strings.HasPrefix(got.Error, c.want) || len(got.Error) > 1024 {
			t.Errorf("submit refused for %s: reply status %d, error of %d bytes %.300q; want a 400 that quotes a little of it",
				c.want, got.Status, len(got.Error), got.Error)
		}
	}
}

// A NATS submit for a model the target lacks is refused in the words POST /jobs uses for
// it, Ollama's chat and generate wording: it said the embedding routes' pull hint
// (`model "ghost" not found, try pulling it first`), so a client that matched one
// wording missed the other.
func TestNATSSubmitModelNotFoundWordedAsHTTP(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	runNATSSubmit(t, b)
	for _, body := range []string{
		`{"model":"ghost","kind":"generate","prompt":"x"}`,
		`{"model":"ghost","kind":"embed","input":"x"}`,
	} {
		resp, data := b.request(t, "POST", "/jobs", []byte(body))
		var httpErr struct {
			Error string `json:"error"`
		}
		if err := json.Unmarshal(data, &httpErr); err != nil || resp.StatusCode != 404 || httpErr.Error != "model 'ghost' not found" {
			t.Fatalf("POST /jobs %s: %d %s", body, resp.StatusCode, data)
		}
		if got := natsSubmit(t, b, body); got.Status != 404 || got.Error != httpErr.Error || got.JobID != "" {
			t.Errorf("NATS submit %s: %+v, want 404 %q as over HTTP", body, got, httpErr.Error)
		}
	}
}

// A NATS client of the listener sending what no client should: each gets a JSON error
// with a 4xx status, or, with no reply subject to answer on, nothing and no job; headers
// other than Idempotency-Key change nothing (X-Foreman-Program least of all: a NATS
// submit proves no token, so it cannot claim a named token's program by header either).
func TestNATSSubmitHostileClient(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t,
		withGateway(func(c *Config) { c.AuthTokens = []NamedToken{{Program: "alice", Token: "tokenA"}} }),
		withBroker(brokertest.WithNATS(func(c *natsd.Config) {
			c.Listen, c.ClientUser, c.ClientPassword = "127.0.0.1:0", "watcher", "s3cret"
		})))
	runNATSSubmit(t, b)
	ctx := testCtx(t, 30*time.Second)
	client, err := nats.Connect(b.Broker.Server.ClientURL(), nats.UserInfo("watcher", "s3cret"), nats.Timeout(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	send := func(m *nats.Msg) submitReply {
		t.Helper()
		m.Subject = broker.SubmitSubject
		for {
			got, err := client.RequestMsgWithContext(ctx, m)
			if errors.Is(err, nats.ErrNoResponders) {
				continue // the responder is still subscribing
			}
			if err != nil {
				t.Fatalf("submit %.40q: %v", m.Data, err)
			}
			var r submitReply
			if err := json.Unmarshal(got.Data, &r); err != nil {
				t.Fatalf("submit %.40q: reply %.200q is no JSON", m.Data, got.Data)
			}
			return r
		}
	}
	for _, body := range []string{"", "null", "[]", "1", `"x"`, "\x00\xff\xfe", "{", strings.Repeat("[", 100000),
		`{"model":"tiny-a","prompt":"x","kind":"generate"} {}`} {
		if r := send(&nats.Msg{Data: []byte(body)}); r.Status != 400 || r.JobID != "" || r.Error == "" {
			t.Errorf("body %.40q: %+v, want a 400", body, r)
		}
	}
	const good = `{"model":"tiny-a","prompt":"x","kind":"generate"}`
	if r := send(&nats.Msg{Data: []byte(good), Header: nats.Header{"Idempotency-Key": {strings.Repeat("k", 256)}}}); r.Status != 400 || r.JobID != "" {
		t.Errorf("an Idempotency-Key of 256 bytes: %+v, want a 400", r)
	}
	repeated := nats.Header{}
	for range 1000 {
		repeated.Add("Idempotency-Key", "same")
	}
	first := send(&nats.Msg{Data: []byte(good), Header: repeated})
	if again := send(&nats.Msg{Data: []byte(good), Header: repeated}); first.JobID == "" || again.JobID != first.JobID {
		t.Errorf("one key sent 1000 times: %+v then %+v, want one job", first, again)
	}
	claimed := send(&nats.Msg{Data: []byte(good), Header: nats.Header{
		HeaderProgram: {"alice", "alice"}, "Nats-Msg-Id": {"x", "y"}, "Nats-Expected-Stream": {"nope"}, "Nats-Rollup": {"all"},
	}})
	if claimed.JobID == "" {
		t.Fatalf("submit with stray headers: %+v", claimed)
	}
	if j, _, err := b.Broker.Store.Get(ctx, claimed.JobID); err != nil || j.Program != "" {
		t.Fatalf("job of a submit with X-Foreman-Program: alice: %+v (%v), want the anonymous program", j, err)
	}

	// No reply subject: nothing to answer on, and no job. The responder takes a
	// connection's requests in order, so the reply-less one is dealt with before the
	// next is answered.
	before, err := b.Broker.Store.QueueLen(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := client.Publish(broker.SubmitSubject, []byte(good)); err != nil {
		t.Fatal(err)
	}
	if r := send(&nats.Msg{Data: []byte(good)}); r.JobID == "" {
		t.Fatalf("submit: %+v", r)
	}
	if after, err := b.Broker.Store.QueueLen(ctx); err != nil || after != before+1 {
		t.Fatalf("queue %d → %d (%v), want one job more: a submit without a reply subject made one", before, after, err)
	}
}

// A NATS submit of a job whose body has a member of a type Ollama's decoder (native, or
// its OpenAI or Anthropic layer's) refuses is answered with that 400 in the decoder's
// words, as POST /jobs answers it, and no job is stored: before, it was accepted to fail
// in its turn (ADR-0141, ADR-0142).
func TestNATSSubmitRefusesMemberTypes(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	runNATSSubmit(t, b)
	for _, c := range []struct{ body, want string }{
		{`{"kind":"chat","model":"tiny-a","messages":[{"role":"user","content":"hi"}],"tools":"x"}`,
			"json: cannot unmarshal string into Go struct field ChatRequest.tools of type api.Tools"},
		{`{"kind":"chat","model":"tiny-a","messages":[{"role":"user","content":"hi"}],"think":"weird"}`,
			`invalid think value: "weird" (must be "high", "medium", "low", true, or false)`},
		{`{"kind":"generate","model":"tiny-a","prompt":"hi","keep_alive":[1]}`, "Unsupported type: '[]interface {}'"},
		{`{"kind":"generate","model":"tiny-a","prompt":"hi","raw":"yes"}`,
			"json: cannot unmarshal string into Go struct field GenerateRequest.raw of type bool"},
		// The OpenAI and Anthropic layers' decoders' (ADR-0142).
		{`{"kind":"openai_chat","model":"tiny-a","messages":"hi"}`,
			"json: cannot unmarshal string into Go struct field ChatCompletionRequest.messages of type []openai.Message"},
		{`{"kind":"openai_completion","model":"tiny-a","prompt":"hi","temperature":"hot"}`,
			"json: cannot unmarshal string into Go struct field CompletionRequest.temperature of type float32"},
		{`{"kind":"openai_responses","model":"tiny-a","input":{}}`,
			"input must be a string or array: json: cannot unmarshal object into Go value of type []json.RawMessage"},
		{`{"kind":"anthropic_messages","model":"tiny-a","max_tokens":4,"messages":[{"role":"user","content":"hi"}],"stop_sequences":"x"}`,
			"json: cannot unmarshal string into Go struct field MessagesRequest.stop_sequences of type []string"},
		{`{"kind":"openai_embeddings","model":"tiny-a","input":"hi","dimensions":1.5}`,
			"json: cannot unmarshal number 1.5 into Go struct field EmbedRequest.dimensions of type int"},
		// A literal of most of the message's size, quoted whole, made a reply too large
		// to send: the client got the short error that stands for it. It is clipped.
		{`{"kind":"anthropic_messages","model":"tiny-a","max_tokens":4,"messages":[{"role":"user","content":"hi"}],"top_k":` +
			strings.Repeat("9", 900<<10) + `}`,
			"json: cannot unmarshal number " + strings.Repeat("9", maxQuoted) + "… into Go struct field MessagesRequest.top_k of type int"},
	} {
		if got := natsSubmit(t, b, c.body); got.Status != 400 || got.Error != c.want || got.JobID != "" {
			t.Errorf("NATS submit %s: %+v, want 400 %q", c.body, got, c.want)
		}
	}
	ctx := testCtx(t, 10*time.Second)
	if jobs, _, err := b.Broker.Store.List(ctx, broker.ListOptions{}); err != nil || len(jobs) != 0 {
		t.Errorf("jobs after the refusals: %d, %v; want none", len(jobs), err)
	}
}
