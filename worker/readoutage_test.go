package worker_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// outageAckWait is the queue's AckWait in the read-outage tests: an outage outlasts it,
// so a delivery not kept in progress meanwhile goes to another worker. Its ticks come
// every second: on a loaded machine (the race detector, a CPU busy with other tests) a
// tick was seen received up to 0.86 s after its time, which with an AckWait of 1 s (a
// tick every 333 ms) let the delivery go though nothing was wrong.
const outageAckWait = 3 * time.Second

// outageStore is the store configuration of the read-outage tests: a job gets one
// attempt, so JetStream gives up on its message at its third delivery (MaxDeliver is
// MaxAttempts+2).
func outageStore(c *broker.Config) {
	c.AckWait, c.MaxAttempts = outageAckWait, 1
}

// outage is a read fault of the store that stands for its first reads (more than the
// queue's deliveries) and for twice the AckWait from the first, then passes. hit is
// closed at the first read it fails.
type outage struct {
	reads atomic.Int32
	once  sync.Once
	hit   chan struct{}
	first atomic.Pointer[time.Time]
}

func newOutage() *outage { return &outage{hit: make(chan struct{})} }

func (o *outage) fault(string) error {
	n := o.reads.Add(1)
	o.once.Do(func() {
		now := time.Now()
		o.first.Store(&now)
		close(o.hit)
	})
	if n <= 4 || time.Since(*o.first.Load()) < 2*outageAckWait {
		return fmt.Errorf("injected: %w", broker.ErrUnavailable)
	}
	return nil
}

// logged records the messages a worker logs at info and above.
type logged struct {
	mu   sync.Mutex
	msgs []string
}

func (l *logged) Enabled(_ context.Context, lv slog.Level) bool { return lv >= slog.LevelInfo }
func (l *logged) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	l.msgs = append(l.msgs, r.Level.String()+" "+r.Message)
	l.mu.Unlock()
	return nil
}
func (l *logged) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logged) WithGroup(string) slog.Handler      { return l }

// count is how many messages begin with prefix (a level, then the message's start).
func (l *logged) count(prefix string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, m := range l.msgs {
		if strings.HasPrefix(m, prefix) {
			n++
		}
	}
	return n
}

func (l *logged) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.msgs, "; ")
}

// idleForeman starts a worker of another foreman on the bundle's NATS, with a target of
// its own, looking for work every 20ms: it takes any delivery of the queue that comes
// free. store is the store configuration the first foreman has (outageStore, unless
// given). It returns its target, which must get no call.
func idleForeman(t *testing.T, tb *testBundle, store ...func(*broker.Config)) *ollamatest.Server {
	t.Helper()
	cfg := broker.Config{Conn: tb.b.Conn}
	if len(store) == 0 {
		store = append(store, outageStore)
	}
	for _, set := range store {
		set(&cfg) // the queue's consumers as the first foreman made them
	}
	other, err := broker.Open(ctxT(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	fake := ollamatest.New(t)
	target, err := ollama.NewClient(ollama.ClientConfig{BaseURL: fake.URL, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	tb.startOn(t, other, worker.Config{Target: target, IdlePoll: 20 * time.Millisecond})
	return fake
}

// A store that cannot read job records for longer than the queue's AckWait and through
// more tries than the job has deliveries, while the queue still delivers (a cluster whose
// jobs bucket lost its leader), costs the job none of them: the worker holds the delivery
// in progress, reads the record again until the store answers, and runs the job, once,
// itself (another foreman, idle meanwhile, never gets the delivery). It logs the outage
// once as it begins and once as it ends. Before ADR-0070 each failed read NAKed the
// delivery, and the job failed "attempts exhausted" unrun at the third.
func TestRecordReadOutageHoldsTheDelivery(t *testing.T) {
	t.Parallel()
	tb := setup(t, brokertest.WithStore(outageStore))
	o := newOutage()
	logs := &logged{}
	tb.start(t, worker.WithRecordFault(worker.Config{Logger: slog.New(logs)}, o.fault))
	j := tb.chat(t, "tiny-a", 1)
	<-o.hit
	other := idleForeman(t, tb)

	if got := tb.waitState(t, j.ID, broker.StateDone); got.Attempt != 1 {
		t.Errorf("done at attempt %d, want 1", got.Attempt)
	}
	tb.waitQueueEmpty(t)
	if n := len(inferenceCalls(tb.fake)); n != 1 {
		t.Errorf("target called %d times, want once", n)
	}
	if n := len(inferenceCalls(other)); n != 0 {
		t.Errorf("the other foreman's target called %d times: the held delivery went to it", n)
	}
	if n := o.reads.Load(); n <= 4 {
		t.Errorf("%d reads of the record, want more than the job's 3 deliveries", n)
	}
	if w, i := logs.count("WARN read job record: the store does not answer"), logs.count("INFO read job record: the store answers again"); w != 1 || i != 1 {
		t.Errorf("%d warnings of the outage and %d notes of its end, want one each: %s", w, i, logs)
	}
	if n := logs.count("WARN read job record; will retry"); n != 0 {
		t.Errorf("the delivery was handed back %d times: %s", n, logs)
	}
}

// A large request body the store cannot read (the object store's leader lost, or it does
// not answer) is held as a record is: the worker reads it again until the store answers,
// and the job runs, once, with it. Before ADR-0070 each failed read NAKed the delivery,
// and the job failed unrun at its third.
func TestBodyReadOutageHoldsTheDelivery(t *testing.T) {
	t.Parallel()
	tb := setup(t, brokertest.WithStore(outageStore))
	o := newOutage()
	logs := &logged{}
	big := `{"model":"tiny-a","messages":[{"role":"user","content":"` + strings.Repeat("a", 2<<20) + `"}]}`
	j := tb.submit(t, "tiny-a", broker.KindChat, big)
	if j.BodyRef == "" {
		t.Fatal("the body is queued inline; the test needs it out of line")
	}
	tb.start(t, worker.WithBodyFault(worker.Config{Logger: slog.New(logs)}, func(id string) error {
		if id != j.ID {
			return nil
		}
		return o.fault(id)
	}))
	<-o.hit
	other := idleForeman(t, tb)

	tb.waitState(t, j.ID, broker.StateDone)
	tb.waitQueueEmpty(t)
	calls := tb.fake.Calls()
	n := 0
	for _, c := range calls {
		if c.Model != "" && c.Path != "/api/show" {
			n++
			if len(c.Body) < 2<<20 {
				t.Errorf("the target got a body of %d bytes, want the job's", len(c.Body))
			}
		}
	}
	if n != 1 {
		t.Errorf("target called %d times, want once", n)
	}
	if n := len(inferenceCalls(other)); n != 0 {
		t.Errorf("the other foreman's target called %d times: the held delivery went to it", n)
	}
	if w, i := logs.count("WARN read request body: the store does not answer"), logs.count("INFO read request body: the store answers again"); w != 1 || i != 1 {
		t.Errorf("%d warnings of the outage and %d notes of its end, want one each: %s", w, i, logs)
	}
}

// A stop while a delivery is held for a store that does not answer ends the hold at once
// and gives the delivery back, unrun and unspent: the next worker runs the job once the
// store answers.
func TestStopEndsAReadOutageHold(t *testing.T) {
	t.Parallel()
	tb := setup(t, brokertest.WithStore(outageStore))
	var reads atomic.Int32
	held := make(chan struct{})
	w := tb.start(t, worker.WithRecordFault(worker.Config{}, func(string) error {
		if reads.Add(1) == 5 { // past the job's 3 deliveries: held
			close(held)
		}
		return fmt.Errorf("injected: %w", broker.ErrUnavailable)
	}))
	j := tb.chat(t, "tiny-a", 1)
	select {
	case <-held:
	case <-ctxT(t).Done():
		t.Fatalf("no hold: %d reads of the record", reads.Load())
	}
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_ = w.Stop(ctx)
	}()
	select {
	case <-stopped:
	case <-ctxT(t).Done():
		t.Fatal("Stop hung on a delivery held for the store")
	}
	if rec, _, err := tb.b.Store.Get(ctxT(t), j.ID); err != nil || rec.State != broker.StateQueued {
		t.Fatalf("record after the stop: %+v %v, want queued", rec, err)
	}
	tb.start(t, worker.Config{})
	tb.waitState(t, j.ID, broker.StateDone)
	if n := len(inferenceCalls(tb.fake)); n != 1 {
		t.Errorf("target called %d times, want once", n)
	}
}

// A held delivery whose record read, once the store answers, ends in an error of the
// store's (a record that does not decode) is held no longer: waiting would not mend it.
// The delivery is handed back as any such read's is, and the job ends failed at its last
// delivery instead of staying held, unrun, for good.
func TestReadOutageEndingInAnErrorEndsTheHold(t *testing.T) {
	t.Parallel()
	tb := setup(t, brokertest.WithStore(outageStore))
	var reads atomic.Int32
	logs := &logged{}
	tb.start(t, worker.WithRecordFault(worker.Config{Logger: slog.New(logs)}, func(string) error {
		if reads.Add(1) <= 2 {
			return fmt.Errorf("injected: %w", broker.ErrUnavailable)
		}
		return errors.New("injected: the record does not decode")
	}))
	j := tb.chat(t, "tiny-a", 1)
	eventually(t, 30*time.Second, "the delivery handed back", func() bool {
		return logs.count("WARN read job record; will retry") > 0
	})
	tb.waitState(t, j.ID, broker.StateFailed)
	if w, i := logs.count("WARN read job record: the store does not answer"), logs.count("INFO read job record: the store answers again"); w != 1 || i != 1 {
		t.Errorf("%d warnings of the outage and %d notes of its end, want one each: %s", w, i, logs)
	}
	if n := len(inferenceCalls(tb.fake)); n != 0 {
		t.Errorf("target called %d times for a job whose record could not be read", n)
	}
}
