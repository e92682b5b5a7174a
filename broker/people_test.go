package broker_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/natsd"
)

func TestParsePriority(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"high", "normal", "low"} {
		if p, err := broker.ParsePriority(s); err != nil || string(p) != s {
			t.Errorf("ParsePriority(%q) = %q, %v", s, p, err)
		}
	}
	for _, s := range []string{"", "HIGH", "urgent", " low"} {
		_, err := broker.ParsePriority(s)
		if !errors.Is(err, broker.ErrBadPriority) || !strings.Contains(err.Error(), "must be high, normal or low") {
			t.Errorf("ParsePriority(%q) = %v, want ErrBadPriority naming the classes", s, err)
		}
	}
}

func TestValidateProgram(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"a", "batch-1", "Nightly.Report_2", strings.Repeat("x", 64)} {
		if err := broker.ValidateProgram(s); err != nil {
			t.Errorf("ValidateProgram(%q) = %v", s, err)
		}
	}
	for _, s := range []string{"", "a b", "a/b", "ü", strings.Repeat("x", 65), "a*"} {
		if err := broker.ValidateProgram(s); !errors.Is(err, broker.ErrBadProgram) {
			t.Errorf("ValidateProgram(%q) = %v, want ErrBadProgram", s, err)
		}
	}
}

// Only the options that make Ollama reload a model (api.Runner) make a runner of their
// own, normalised as Ollama reads them.
func TestLoadOptionsToken(t *testing.T) {
	t.Parallel()
	tok := func(body string) string { return broker.LoadOptionsToken([]byte(body)) }
	for _, body := range []string{
		`{"model":"m"}`, `not json`, `{"options":null}`, `{"options":{}}`,
		`{"options":{"temperature":0,"num_predict":8,"seed":1}}`, // sampling: no reload
		`{"options":{"num_gpu":-1}}`,                             // "as loaded"
		`{"options":{"num_ctx":"big"}}`,                          // Ollama refuses it: loads nothing
		`{"keep_alive":"10m"}`,
	} {
		if got := tok(body); got != broker.DefaultLoadOptions {
			t.Errorf("%s: token %q, want %q", body, got, broker.DefaultLoadOptions)
		}
	}
	a := tok(`{"options":{"num_ctx":256,"temperature":0.5}}`)
	if a == broker.DefaultLoadOptions || len(a) != 16 || strings.ToLower(a) != a {
		t.Fatalf("num_ctx 256: token %q", a)
	}
	for _, same := range []string{`{"options":{"num_ctx":256.0}}`, `{"options":{"temperature":1,"num_ctx":256,"num_gpu":-1}}`} {
		if got := tok(same); got != a {
			t.Errorf("%s: token %q, want %q (same runner)", same, got, a)
		}
	}
	for _, other := range []string{`{"options":{"num_ctx":512}}`, `{"options":{"num_ctx":256,"num_batch":8}}`, `{"options":{"use_mmap":false}}`, `{"options":{"num_thread":2}}`, `{"options":{"main_gpu":1}}`} {
		if got := tok(other); got == a || got == broker.DefaultLoadOptions {
			t.Errorf("%s: token %q, want a runner of its own", other, got)
		}
	}
}

func TestQueueKeys(t *testing.T) {
	t.Parallel()
	model := token(t, "tiny-a")
	j := &broker.Job{Model: "tiny-a", Kind: broker.KindChat}
	k, err := broker.KeyOf(j, []byte(`{}`))
	if err != nil || k.String() != model {
		t.Fatalf("default job: key %q, %v; want the plain model token %q", k, err, model)
	}
	j.Priority, j.Program = broker.PriorityHigh, "Batch.1"
	k, err = broker.KeyOf(j, []byte(`{"options":{"num_ctx":256}}`))
	if err != nil {
		t.Fatal(err)
	}
	s := k.String()
	if strings.Count(s, ".") != 3 || !strings.HasPrefix(s, model+".") || !strings.Contains(s, ".high.") {
		t.Fatalf("key %q", s)
	}
	back, err := broker.ParseQueueKey(s)
	if err != nil || back != k || back.ProgramName() != "Batch.1" || back.Runner() != model+"."+k.Opts {
		t.Fatalf("ParseQueueKey(%q) = %+v, %v", s, back, err)
	}
	if len(broker.ConsumerName(s)) > 255 || strings.Contains(broker.ConsumerName(s), ".") {
		t.Errorf("consumer name %q", broker.ConsumerName(s))
	}
	long, _ := broker.KeyOf(&broker.Job{Model: strings.Repeat("m", 150), Kind: broker.KindChat, Priority: broker.PriorityLow, Program: strings.Repeat("p", 64)}, []byte(`{"options":{"num_ctx":1}}`))
	if n := broker.ConsumerName(long.String()); len(n) > 255 || n == broker.ConsumerName(s) {
		t.Errorf("long key's consumer name %q (%d bytes)", n, len(n))
	}
	for _, bad := range []string{
		model + ".d.normal._", // the default spelled out: foreman never makes it
		model + ".d.urgent._", model + ".xyz.high._", model + ".d.high", model + ".d.high._.x",
		model + ".d.high.MFRGG", model + ".d.high.1", "x.d.high._",
	} {
		if _, err := broker.ParseQueueKey(bad); !errors.Is(err, broker.ErrUnusable) || broker.TokenValid(bad) {
			t.Errorf("ParseQueueKey(%q) = %v, want ErrUnusable", bad, err)
		}
	}
	j.Priority = "urgent"
	if _, err := broker.KeyOf(j, nil); !errors.Is(err, broker.ErrBadPriority) {
		t.Errorf("bad priority: %v", err)
	}
	j.Priority, j.Program = "", "a b"
	if _, err := broker.KeyOf(j, nil); !errors.Is(err, broker.ErrBadProgram) {
		t.Errorf("bad program: %v", err)
	}
}

// A job's class and program put it on a queue of its own, counted per program without a
// scan; a queued job of any queue can be canceled.
func TestSubmitQueuesByClassAndProgram(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	sub := func(model, program string, p broker.Priority, body string) *broker.Job {
		t.Helper()
		j, err := b.Store.Submit(ctx, &broker.Job{Model: model, Kind: broker.KindChat, Priority: p, Program: program}, []byte(body))
		if err != nil {
			t.Fatal(err)
		}
		return j
	}
	sub("tiny-a", "", "", `{}`)
	hi := sub("tiny-a", "alpha", broker.PriorityHigh, `{}`)
	sub("tiny-a", "alpha", broker.PriorityLow, `{"options":{"num_ctx":256}}`)
	sub("tiny-b", "beta", "", `{}`)
	sub("tiny-b", "", broker.PriorityHigh, `{}`)
	if _, err := b.Store.Submit(ctx, &broker.Job{Model: "tiny-a", Kind: broker.KindChat, Priority: "urgent"}, nil); !errors.Is(err, broker.ErrBadPriority) {
		t.Errorf("bad priority: %v", err)
	}
	for prog, want := range map[string]uint64{"": 2, "alpha": 2, "beta": 1, "gamma": 0} {
		if n, err := b.Store.QueuedOfProgram(ctx, prog); err != nil || n != want {
			t.Errorf("QueuedOfProgram(%q) = %d, %v; want %d", prog, n, err, want)
		}
	}
	depth, err := b.Store.Depth(ctx)
	if err != nil || depth[token(t, "tiny-a")] != 3 || depth[token(t, "tiny-b")] != 2 || len(depth) != 2 {
		t.Errorf("Depth = %v, %v; want 3 of tiny-a and 2 of tiny-b", depth, err)
	}
	keys, err := b.Store.DepthByKey(ctx)
	if err != nil || len(keys) != 5 {
		t.Errorf("DepthByKey = %v, %v; want 5 queues", keys, err)
	}
	key, _ := broker.KeyOf(hi, nil)
	d, err := b.Store.Next(ctx, key.String())
	if err != nil || d == nil || d.JobID != hi.ID || d.Msg.Headers().Get(broker.HeaderPriority) != "high" || d.Msg.Headers().Get(broker.HeaderProgram) != "alpha" {
		t.Fatalf("Next(%s) = %+v, %v", key, d, err)
	}
	if err := d.Msg.Nak(); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Store.Cancel(ctx, hi.ID, ""); err != nil {
		t.Fatalf("cancel: %v", err)
	}
	if n, _ := b.Store.QueuedOfProgram(ctx, "alpha"); n != 1 {
		t.Errorf("after cancel: alpha has %d queued, want 1", n)
	}
}

// A store made before classes (stream subjects foreman.queue.*) opens with the new subjects
// and keeps its queued jobs: they wait on the plain model subject, as default jobs do.
func TestOpenUpgradesAStoreFromBeforeClasses(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	srv, err := natsd.Start(natsd.Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	nc, err := srv.Connect()
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	ctx := ctxT(t)
	js, _ := jetstream.New(nc)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: broker.QueueStream, Subjects: []string{"foreman.queue.*"}, Retention: jetstream.WorkQueuePolicy,
		Storage: jetstream.FileStorage, Discard: jetstream.DiscardNew, MaxMsgs: 1000, MaxAge: 24 * time.Hour,
		Duplicates: 10 * time.Minute, AllowDirect: true,
	}); err != nil {
		t.Fatal(err)
	}
	old := nats.NewMsg("foreman.queue." + token(t, "tiny-a"))
	id := broker.NewID()
	old.Header.Set(broker.HeaderJobID, id)
	old.Header.Set(broker.HeaderModel, "tiny-a")
	old.Header.Set(broker.HeaderKind, "chat")
	old.Data = []byte(`{"model":"tiny-a"}`)
	if _, err := js.PublishMsg(ctx, old); err != nil {
		t.Fatal(err)
	}
	oc, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := broker.Open(oc, broker.Config{Conn: nc})
	if err != nil {
		t.Fatalf("open over the old stream: %v", err)
	}
	hi, err := st.Submit(ctx, &broker.Job{Model: "tiny-a", Kind: broker.KindChat, Priority: broker.PriorityHigh, Program: "p"}, []byte(`{}`))
	if err != nil {
		t.Fatalf("submit a high job: %v", err)
	}
	if n, err := st.QueuedOfProgram(ctx, ""); err != nil || n != 1 {
		t.Errorf("anonymous queued = %d, %v; want the old job", n, err)
	}
	d, err := st.Next(ctx, token(t, "tiny-a"))
	if err != nil || d == nil || d.JobID != id {
		t.Fatalf("old job: %+v, %v", d, err)
	}
	key, _ := broker.KeyOf(hi, nil)
	if d, err := st.Next(ctx, key.String()); err != nil || d == nil || d.JobID != hi.ID {
		t.Fatalf("high job: %+v, %v", d, err)
	}
}

// A submitter that decoded the body already passes its load options on the job; KeyOf
// then takes them as they are, and LoadOptions, decoded in the submitter's struct, gives
// the token LoadOptionsToken reads from the body.
func TestLoadOptionsDecodedOnce(t *testing.T) {
	t.Parallel()
	for _, body := range []string{
		`{"options":{"num_ctx":256}}`, `{"options":{"num_ctx":256},"OPTIONS":{"num_gpu":1}}`,
		`{"options":{"num_ctx":256},"options":null}`, `{"options":"big","options":{"num_ctx":256}}`,
		`{"options":{"num_ctx":256},"options":[1]}`, `{"model":"m"}`,
	} {
		var req struct {
			Options broker.LoadOptions `json:"options"`
		}
		if err := json.Unmarshal([]byte(body), &req); err != nil {
			t.Fatalf("%s: %v", body, err)
		}
		if got, want := req.Options.Token(), broker.LoadOptionsToken([]byte(body)); got != want {
			t.Errorf("%s: token %q, want %q", body, got, want)
		}
	}
	opts := broker.LoadOptionsToken([]byte(`{"options":{"num_ctx":256}}`))
	k, err := broker.KeyOf(&broker.Job{Model: "tiny-a", Kind: broker.KindChat, LoadOptions: opts}, nil)
	if err != nil || k.Opts != opts {
		t.Fatalf("key %+v, %v; want load options %q", k, err, opts)
	}
}

// The queue's delivery limit and the worker's last-delivery check read one rule.
func TestMaxDeliverAboveAttempts(t *testing.T) {
	t.Parallel()
	if got := (broker.Config{MaxAttempts: 3}).MaxDeliver(); got != 5 {
		t.Fatalf("MaxDeliver %d, want MaxAttempts+2 = 5", got)
	}
}
