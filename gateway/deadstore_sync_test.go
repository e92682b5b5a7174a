package gateway

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/natsd"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// faultyStore is a bundle whose store's Config.WriteFault reports what the test sets:
// exclusive, foreman's own (the embedded server, as foreman serve runs it), or shared.
// A sync response looks at its job every 100 ms (SyncOutageWait/4); adjust, when set,
// changes the gateway's Config further.
func faultyStore(t *testing.T, exclusive bool, adjust func(*Config)) (*testBundle, func(error)) {
	t.Helper()
	var fault atomic.Pointer[error]
	b := newTestBundle(t, withBroker(brokertest.WithStore(func(c *broker.Config) {
		c.Exclusive = exclusive
		c.WriteFault = func() error {
			if err := fault.Load(); err != nil {
				return *err
			}
			return nil
		}
	})), withGateway(func(c *Config) {
		c.SyncOutageWait = 400 * time.Millisecond // a look every 100 ms
		if adjust != nil {
			adjust(c)
		}
	}))
	set := func(err error) {
		t.Helper()
		fault.Store(&err)
		if b.Broker.Store.CheckWriteFault() == nil {
			t.Fatal("the store took no fault")
		}
	}
	return b, set
}

// noSpace is the write error of a stream on a full disk: it lasts until foreman restarts.
var noSpace = errors.New("JetStream stream 'FOREMAN > KV_FOREMAN_JOBS' write error: no space left on device")

// A sync client whose job waits in the queue when its own store finds a fault that only
// a restart ends (a stream that failed a write: the disk full or gone read-only) is
// answered the submit's 503 at its next look at the job: the job cannot start before the
// restart (a start is a write), and the restart waits for an operator.
func TestWaitingClientOfAStoreThatNeedsARestartIsAnswered(t *testing.T) {
	t.Parallel()
	b, setFault := faultyStore(t, true, nil)
	ctx := testCtx(t, 30*time.Second)
	res, _ := waitingChat(t, ctx, b, "false") // no worker: the job stays queued
	setFault(noSpace)
	wantStoreRefusal(t, res)
}

// wantStoreRefusal waits for the answer on res: the store's 503, which says a restart is
// needed, within 10 s (a look comes every 100 ms).
func wantStoreRefusal(t *testing.T, res <-chan rawResponse) {
	t.Helper()
	select {
	case got := <-res:
		if msg := errorBody(t, got.Body); got.Status != http.StatusServiceUnavailable ||
			!strings.HasPrefix(msg, "job store cannot write") || !strings.Contains(msg, "restart") {
			t.Fatalf("waiting client got %d %s, want 503 job store cannot write, restart", got.Status, got.Body)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the waiting client still waits 10 s after the store's fault was known")
	}
}

// A sync client whose job backs off between attempts (retrying: its first attempt found
// the target's connection dropped, and nothing of it reached the client) waits to start
// as one queued does: its store's fault that only a restart ends is its 503 too.
func TestRetryingClientOfAStoreThatNeedsARestartIsAnswered(t *testing.T) {
	t.Parallel()
	var w *worker.Worker
	b, setFault := faultyStore(t, true, func(c *Config) {
		var err error
		// The retry waits a minute: the job stays retrying while the test looks.
		w, err = worker.New(worker.Config{Store: c.Store, Target: c.Target, Inventory: c.Inventory, RetryDelay: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		c.Queue = w
	})
	ctx := testCtx(t, 30*time.Second)
	b.Fake.FailNextOn("/api/chat", 1, ollamatest.DropConnection)
	states := watchStates(t, b.Broker.Conn)
	res, id := waitingChat(t, ctx, b, "false")
	runUntilCleanup(t, "worker", w.Run)
	j := waitState(t, ctx, states, "the job retrying", func(j *broker.Job) bool {
		return j.ID == id && (j.State == broker.StateRetrying || j.State.Terminal())
	})
	if j.State != broker.StateRetrying || j.Attempt != 1 {
		t.Fatalf("job %s after its failed attempt %d (%s), want retrying after attempt 1", j.State, j.Attempt, j.Error)
	}
	setFault(noSpace)
	wantStoreRefusal(t, res)
}

// looks waits until the sync response of job id has looked at its record n times since
// the call (reads: recordReads of the job), each after the one before had ended; it fails
// the test if the response ends (ended) first.
func looks(t *testing.T, ctx context.Context, reads <-chan struct{}, n int, ended <-chan string) {
	t.Helper()
	for i := 0; i < n; i++ {
		select {
		case <-reads:
		case got := <-ended:
			t.Fatalf("the call was answered after %d looks at its job: %s", i, got)
		case <-ctx.Done():
			t.Fatalf("%d looks at the job of the waiting call, want %d", i, n)
		}
	}
}

// answered turns the answer on res into the text looks reports.
func answered(res <-chan rawResponse) <-chan string {
	out := make(chan string, 1)
	go func() {
		if got, ok := <-res; ok {
			out <- fmt.Sprintf("%d %s", got.Status, got.Body)
		}
	}()
	return out
}

// endWaiting ends a call left waiting as a stopping foreman does (AnswerWaiting) and
// checks that it got the shutdown's 503, not the store's.
func endWaiting(t *testing.T, ctx context.Context, b *testBundle, ended <-chan string) {
	t.Helper()
	if err := b.GW.AnswerWaiting(ctx); err != nil {
		t.Fatalf("AnswerWaiting: %v", err)
	}
	select {
	case got := <-ended:
		if !strings.HasPrefix(got, "503 ") || !strings.Contains(got, "shutting down") {
			t.Fatalf("waiting client got %s, want 503 shutting down", got)
		}
	case <-ctx.Done():
		t.Fatal("the waiting client got no answer from AnswerWaiting")
	}
}

// A fault that may pass without a restart (the data directory could not be checked: a
// later check may find it in place) leaves a waiting sync client waiting, look after
// look: its job may yet start.
func TestWaitingClientOfAStoreWithAFaultThatMayPassWaits(t *testing.T) {
	t.Parallel()
	b, setFault := faultyStore(t, true, nil)
	ctx := testCtx(t, 30*time.Second)
	res, id := waitingChat(t, ctx, b, "false") // no worker: the job stays queued
	reads := recordReads(t, b, id)
	setFault(broker.FaultMayPass(fmt.Errorf("data directory /data %w: %w", natsd.ErrDataDirUnchecked, syscall.EIO)))
	if err := b.Broker.Store.WriteFault(); err == nil || broker.NeedsRestart(err) {
		t.Fatalf("store's fault %v, want one that may pass (the test's premise)", err)
	}
	ended := answered(res)
	// The first read may be of a look begun before the fault was known; each later one
	// comes after a look that saw it ended with the call still waiting.
	looks(t, ctx, reads, 3, ended)
	endWaiting(t, ctx, b, ended)
}

// On a shared NATS another foreman may run the job, whatever this one's store says: a
// waiting sync client is not answered for a fault, even one that would need a restart of
// a store of its own.
func TestWaitingClientOnASharedNATSWaitsThroughAStoreFault(t *testing.T) {
	t.Parallel()
	b, setFault := faultyStore(t, false, nil)
	ctx := testCtx(t, 30*time.Second)
	res, id := waitingChat(t, ctx, b, "false") // no worker here: the job stays queued
	reads := recordReads(t, b, id)
	setFault(noSpace)
	if err := b.Broker.Store.WriteFault(); !broker.NeedsRestart(err) {
		t.Fatalf("store's fault %v, want one that needs a restart (the test's premise)", err)
	}
	ended := answered(res)
	looks(t, ctx, reads, 3, ended)
	endWaiting(t, ctx, b, ended)
}

// A streamed call whose first frames reached its client is not answered the store's 503
// (nor an error line) for a fault that needs a restart, even while its record still says
// queued: the answer has begun, and its runner goes on. Its stream goes on to its end.
// The frames are published by hand, standing in for a runner whose start the record does
// not show (the worker's frames wait for the stored start, ADR-0032, so this is the guard
// behind the state).
func TestStreamedClientWithFramesSentIsNotAnsweredTheStoreFault(t *testing.T) {
	t.Parallel()
	b, setFault := faultyStore(t, true, nil)
	ctx := testCtx(t, 30*time.Second)
	states := watchStates(t, b.Broker.Conn)
	type reply struct {
		resp *http.Response
		err  error
	}
	replies := make(chan reply, 1)
	go func() {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, b.URL+"/api/chat", strings.NewReader(string(chatBody("tiny-a", "streamed", ""))))
		if err != nil {
			replies <- reply{err: err}
			return
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		replies <- reply{resp, err}
	}()
	id := waitState(t, ctx, states, "job queued", func(j *broker.Job) bool { return j.State == broker.StateQueued }).ID
	reads := recordReads(t, b, id)
	first := "{\"message\":{\"role\":\"assistant\",\"content\":\"a\"},\"done\":false}\n"
	if err := b.Broker.Conn.PublishMsg(jobFrame(id, 1, first, broker.HeaderContentType, "application/x-ndjson")); err != nil {
		t.Fatal(err)
	}
	var r reply
	select {
	case r = <-replies:
	case <-ctx.Done():
		t.Fatal("no answer's headers after the first frame")
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	defer r.resp.Body.Close()
	body := bufio.NewReader(r.resp.Body)
	if line, err := body.ReadString('\n'); r.resp.StatusCode != http.StatusOK || line != first {
		t.Fatalf("got %d %q (%v), want 200 and the first frame", r.resp.StatusCode, line, err)
	}
	setFault(noSpace)
	rest := make(chan string, 1)
	go func() {
		b, err := io.ReadAll(body)
		rest <- fmt.Sprintf("%q (%v)", b, err)
	}()
	looks(t, ctx, reads, 3, rest)
	last := "{\"message\":{\"role\":\"assistant\",\"content\":\"b\"},\"done\":true}\n"
	for _, m := range []*nats.Msg{jobFrame(id, 2, last), jobFrame(id, 3, "", broker.HeaderFinal, "done")} {
		if err := b.Broker.Conn.PublishMsg(m); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case got := <-rest:
		if want := fmt.Sprintf("%q (%v)", last, nil); got != want {
			t.Fatalf("the stream went on with %s, want %s", got, want)
		}
	case <-ctx.Done():
		t.Fatal("the stream did not end after its final marker")
	}
}

// A non-streamed call whose answer has begun to come (its frames held until the final
// marker, nothing written yet) is not answered the store's 503 either: its job has a
// runner, and the caller gets the answer once it ends.
func TestHeldAnswerIsNotAnsweredTheStoreFault(t *testing.T) {
	t.Parallel()
	b, setFault := faultyStore(t, true, nil)
	relayed := make(chan struct{}, 1)
	b.GW.trace = func(_, stage string, _ time.Time) {
		if stage == traceRelayed {
			relayed <- struct{}{}
		}
	}
	ctx := testCtx(t, 30*time.Second)
	res, id := waitingChat(t, ctx, b, "false")
	reads := recordReads(t, b, id)
	answer := `{"message":{"role":"assistant","content":"a"},"done":true}`
	if err := b.Broker.Conn.PublishMsg(jobFrame(id, 1, answer, broker.HeaderContentType, "application/json; charset=utf-8")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-relayed: // the response holds the frame
	case <-ctx.Done():
		t.Fatal("the frame did not reach the response")
	}
	setFault(noSpace)
	ended := answered(res)
	looks(t, ctx, reads, 3, ended)
	if err := b.Broker.Conn.PublishMsg(jobFrame(id, 2, "", broker.HeaderFinal, "done")); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-ended:
		if got != "200 "+answer {
			t.Fatalf("the call got %s, want 200 %s", got, answer)
		}
	case <-ctx.Done():
		t.Fatal("no answer after the final marker")
	}
}
