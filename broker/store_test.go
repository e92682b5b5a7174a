package broker_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/natsd"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func submit(t *testing.T, st *broker.Store, model, body string) *broker.Job {
	t.Helper()
	j, err := st.Submit(ctxT(t), &broker.Job{Model: model, Kind: broker.KindChat}, []byte(body))
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	return j
}

// arrival bounds the wait of a fetch for a job the test has just queued. The server
// acknowledges a publish before it tells the stream's consumers of it, so a no-wait Next
// on a consumer made before the publish may come up empty for a moment (the worker's
// rechecks cover that); a waiting fetch is answered the moment the consumer has it.
const arrival = 20 * time.Second

func token(t *testing.T, model string) string {
	t.Helper()
	tok, err := broker.ModelToken(model)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestJobsSurviveRestart(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	var ids []string
	for i := range 100 {
		j := submit(t, b.Store, "llama3.2:3b", fmt.Sprintf(`{"model":"llama3.2:3b","n":%d}`, i))
		ids = append(ids, j.ID)
	}
	b.Restart(t)
	ctx := ctxT(t)
	for _, id := range ids {
		j, _, err := b.Store.Get(ctx, id)
		if err != nil {
			t.Fatalf("get %s after restart: %v", id, err)
		}
		if j.State != broker.StateQueued {
			t.Fatalf("job %s state %s", id, j.State)
		}
	}
	tok := token(t, "llama3.2:3b")
	for i, id := range ids {
		d, err := b.Store.Next(ctx, tok)
		if err != nil || d == nil {
			t.Fatalf("next #%d: %v %v", i, d, err)
		}
		if d.JobID != id {
			t.Fatalf("message #%d is job %s, want %s (order lost)", i, d.JobID, id)
		}
		if want := fmt.Sprintf(`{"model":"llama3.2:3b","n":%d}`, i); string(d.Body) != want {
			t.Fatalf("body #%d = %s", i, d.Body)
		}
		if err := b.Store.Finish(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	if d, err := b.Store.Next(ctx, tok); d != nil || err != nil {
		t.Fatalf("queue should be empty: %v %v", d, err)
	}
}

func TestUnackedJobRedeliveredAfterRestart(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) { c.AckWait = 2 * time.Second }))
	j := submit(t, b.Store, "tiny-a", `{"model":"tiny-a"}`)
	tok := token(t, "tiny-a")
	d, err := b.Store.Next(ctxT(t), tok)
	if err != nil || d == nil {
		t.Fatalf("first delivery: %v %v", d, err)
	}
	if d.NumDelivered != 1 {
		t.Fatalf("NumDelivered = %d", d.NumDelivered)
	}
	// Crash: no ack, the process goes away.
	b.Restart(t)
	// The consumer's ack timer survives the restart; the job must come back on its own
	// after AckWait at the latest. Poll with a deadline instead of sleeping.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		d, err = b.Store.Next(ctx, tok)
		if err != nil {
			t.Fatal(err)
		}
		if d != nil {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("job never redelivered")
		case <-time.After(100 * time.Millisecond):
		}
	}
	if d.JobID != j.ID || d.NumDelivered != 2 {
		t.Fatalf("redelivered %s (delivered %d times), want %s twice", d.JobID, d.NumDelivered, j.ID)
	}
}

func TestIllegalTransitionRejected(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	j := submit(t, b.Store, "m", `{}`)
	set := func(s broker.State) error {
		_, _, err := b.Store.Modify(ctx, j.ID, func(j *broker.Job) error { j.State = s; return nil })
		return err
	}
	for _, s := range []broker.State{broker.StateLoading, broker.StateWorking, broker.StateDone} {
		if err := set(s); err != nil {
			t.Fatalf("→ %s: %v", s, err)
		}
	}
	if err := set(broker.StateWorking); !errors.Is(err, broker.ErrIllegalTransition) {
		t.Fatalf("done → working: err = %v, want ErrIllegalTransition", err)
	}
	got, _, _ := b.Store.Get(ctx, j.ID)
	if got.State != broker.StateDone || got.FinishedAt == nil || got.StartedAt == nil {
		t.Fatalf("record after rejected move: %+v", got)
	}
}

// TestConcurrentConflictingUpdates: writers holding the same revision, exactly one wins;
// also when the writes keep the state (written marked HeaderSameState).
func TestConcurrentConflictingUpdates(t *testing.T) {
	t.Parallel()
	for _, to := range []broker.State{broker.StateWorking, broker.StateQueued} {
		t.Run(string(to), func(t *testing.T) {
			t.Parallel()
			b := brokertest.New(t)
			ctx := ctxT(t)
			j := submit(t, b.Store, "m", `{}`)
			_, rev, err := b.Store.Get(ctx, j.ID)
			if err != nil {
				t.Fatal(err)
			}
			// Eight writers all hold the same revision; exactly one may win.
			var wg sync.WaitGroup
			errs := make(chan error, 8)
			for i := range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, _, err := b.Store.Update(ctx, j.ID, rev, func(j *broker.Job) error {
						j.State = to
						j.Error = fmt.Sprint("writer ", i)
						return nil
					})
					errs <- err
				}()
			}
			wg.Wait()
			close(errs)
			wins := 0
			for err := range errs {
				switch {
				case err == nil:
					wins++
				case errors.Is(err, broker.ErrConflict):
				default:
					t.Fatalf("unexpected error: %v", err)
				}
			}
			if wins != 1 {
				t.Fatalf("%d writers won, want exactly 1", wins)
			}
		})
	}
}

func TestDuplicateSubmitIsNoop(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	id := broker.NewID()
	for range 3 {
		j, err := b.Store.Submit(ctx, &broker.Job{ID: id, Model: "m", Kind: broker.KindChat}, []byte(`{"a":1}`))
		if err != nil || j.ID != id {
			t.Fatalf("submit: %v %v", j, err)
		}
	}
	n, err := b.Store.QueueLen(ctx)
	if err != nil || n != 1 {
		t.Fatalf("queue holds %d messages (%v), want 1", n, err)
	}
}

func TestLargePayloadGoesToObjectStore(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	body := bytes.Repeat([]byte("0123456789abcdef"), 5*1024*1024/16) // 5 MiB
	j, err := b.Store.Submit(ctx, &broker.Job{Model: "vision", Kind: broker.KindChat}, body)
	if err != nil {
		t.Fatalf("submit 5 MiB: %v", err)
	}
	if j.BodyRef == "" {
		t.Fatal("a 5 MiB body should be stored by reference")
	}
	d, err := b.Store.Next(ctx, token(t, "vision"))
	if err != nil || d == nil {
		t.Fatalf("next: %v %v", d, err)
	}
	if len(d.Msg.Data()) != 0 || d.Msg.Headers().Get(broker.HeaderBodyRef) == "" {
		t.Fatal("queue message should carry a reference, not the body")
	}
	if !bytes.Equal(d.Body, body) {
		t.Fatalf("body mismatch: %d bytes back", len(d.Body))
	}
	if err := b.Store.Finish(ctx, d); err != nil {
		t.Fatal(err)
	}
}

// On a server whose max payload is small (64 KiB, less than the room left for headers
// under the default 1 MiB), a body too large for a message goes to the object store, in
// chunks that fit a message, and so does an artifact; a small one still rides inline.
func TestSmallMaxPayloadBodiesGoToObjectStore(t *testing.T) {
	t.Parallel()
	const maxPayload = 64 << 10
	b := brokertest.New(t, brokertest.WithNATS(func(c *natsd.Config) { c.MaxPayload = maxPayload }))
	if got := b.Conn.MaxPayload(); got != maxPayload {
		t.Fatalf("server max payload %d, want %d", got, maxPayload)
	}
	ctx := ctxT(t)
	large := bytes.Repeat([]byte("0123456789abcdef"), 200<<10/16) // 200 KiB: several chunks
	small := bytes.Repeat([]byte("x"), 1<<10)
	for _, body := range [][]byte{large, small} {
		j, err := b.Store.Submit(ctx, &broker.Job{Model: "vision", Kind: broker.KindChat}, body)
		if err != nil {
			t.Fatalf("submit %d bytes: %v", len(body), err)
		}
		if byRef := len(body) > maxPayload; (j.BodyRef != "") != byRef {
			t.Errorf("a body of %d bytes stored by reference: %v, want %v", len(body), j.BodyRef != "", byRef)
		}
		d, err := b.Store.NextWait(ctx, token(t, "vision"), arrival)
		if err != nil || d == nil {
			t.Fatalf("next: %v %v", d, err)
		}
		if !bytes.Equal(d.Body, body) {
			t.Fatalf("body mismatch: %d bytes back, want %d", len(d.Body), len(body))
		}
		if err := b.Store.Finish(ctx, d); err != nil {
			t.Fatal(err)
		}
		if len(body) > maxPayload {
			if _, err := b.Store.PutArtifact(ctx, j.ID, "result.bin", "application/octet-stream", body); err != nil {
				t.Fatalf("put a %d-byte artifact: %v", len(body), err)
			}
			if _, got, err := b.Store.GetArtifact(ctx, j.ID, "result.bin"); err != nil || !bytes.Equal(got, body) {
				t.Fatalf("get the artifact: %d bytes, %v", len(got), err)
			}
		}
	}
}

func TestQueueFull(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) { c.MaxQueue = 3 }))
	ctx := ctxT(t)
	for range 3 {
		submit(t, b.Store, "m", `{}`)
	}
	_, err := b.Store.Submit(ctx, &broker.Job{Model: "m", Kind: broker.KindChat}, []byte(`{}`))
	if !errors.Is(err, broker.ErrQueueFull) {
		t.Fatalf("4th submit: %v, want ErrQueueFull", err)
	}
	jobs, _, err := b.Store.List(ctx, broker.ListOptions{})
	if err != nil || len(jobs) != 3 {
		t.Fatalf("a rejected job must leave no record: %d records (%v)", len(jobs), err)
	}
}

// A job whose record would be too large to go on being written (the gateway bounds each
// field; this is the backstop) is refused, and leaves neither record nor queue message.
func TestSubmitRefusesATooLargeRecord(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	j := &broker.Job{Model: "m", Kind: broker.KindChat, Webhook: &broker.Webhook{URL: "http://127.0.0.1:9/" + strings.Repeat("a", 20<<10)}}
	if _, err := b.Store.Submit(ctx, j, []byte(`{}`)); !errors.Is(err, broker.ErrJobTooLarge) {
		t.Fatalf("submit: %v, want ErrJobTooLarge", err)
	}
	jobs, _, err := b.Store.List(ctx, broker.ListOptions{})
	if err != nil || len(jobs) != 0 {
		t.Fatalf("%d records (%v), want none", len(jobs), err)
	}
	if n, err := b.Store.QueueLen(ctx); err != nil || n != 0 {
		t.Fatalf("queue holds %d (%v), want none", n, err)
	}
	if _, err := broker.ModelToken("m" + strings.Repeat(" ", 1<<10)); !errors.Is(err, broker.ErrBadModel) {
		t.Fatalf("padded model name: %v, want ErrBadModel", err)
	}
}

func TestListNewestFirstFilteredPaged(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	var aIDs []string
	for i := range 7 {
		model := "a"
		if i%2 == 1 {
			model = "b"
		}
		j := submit(t, b.Store, model, `{}`)
		if model == "a" {
			aIDs = append(aIDs, j.ID)
		}
	}
	if _, _, err := b.Store.Modify(ctx, aIDs[0], func(j *broker.Job) error { j.State = broker.StateWorking; return nil }); err != nil {
		t.Fatal(err)
	}
	var got []string
	cursor := ""
	for {
		page, next, err := b.Store.List(ctx, broker.ListOptions{Model: "A:latest", Limit: 3, Cursor: cursor})
		if err != nil {
			t.Fatal(err)
		}
		for _, j := range page {
			got = append(got, j.ID)
		}
		if next == "" {
			break
		}
		cursor = next
	}
	want := []string{aIDs[3], aIDs[2], aIDs[1], aIDs[0]}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("model a newest first = %v, want %v", got, want)
	}
	working, _, err := b.Store.List(ctx, broker.ListOptions{States: []broker.State{broker.StateWorking}})
	if err != nil || len(working) != 1 || working[0].ID != aIDs[0] {
		t.Fatalf("state filter: %v %v", working, err)
	}
}

func TestCancelQueuedRemovesFromQueue(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	keep := submit(t, b.Store, "m", `{"keep":1}`)
	drop := submit(t, b.Store, "m", `{"drop":1}`)
	if _, err := b.Store.Cancel(ctx, drop.ID, "canceled by test"); err != nil {
		t.Fatal(err)
	}
	if n, _ := b.Store.QueueLen(ctx); n != 1 {
		t.Fatalf("queue length %d after cancel, want 1", n)
	}
	d, err := b.Store.Next(ctx, token(t, "m"))
	if err != nil || d == nil || d.JobID != keep.ID {
		t.Fatalf("next = %v %v, want the kept job", d, err)
	}
	if _, err := b.Store.Cancel(ctx, drop.ID, ""); !errors.Is(err, broker.ErrTerminal) {
		t.Fatalf("cancel of a canceled job: %v, want ErrTerminal", err)
	}
}

func TestStateEventsRepublished(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	id := broker.NewID()
	sub, err := b.Conn.SubscribeSync(broker.StateSubject(id))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Store.Submit(ctx, &broker.Job{ID: id, Model: "m", Kind: broker.KindGenerate}, []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	for _, s := range []broker.State{broker.StateWorking, broker.StateFailed} {
		if _, _, err := b.Store.Modify(ctx, id, func(j *broker.Job) error { j.State = s; j.Error = "boom"; return nil }); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range []broker.State{broker.StateQueued, broker.StateWorking, broker.StateFailed} {
		msg, err := sub.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatalf("waiting for %s event: %v", want, err)
		}
		ev, err := broker.DecodeJob(msg.Data)
		if err != nil {
			t.Fatal(err)
		}
		if ev.ID != id || ev.State != want || ev.Model != "m" || ev.At.IsZero() {
			t.Fatalf("event %+v, want state %s", ev, want)
		}
	}
}

func TestArtifacts(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	j := submit(t, b.Store, "m", `{}`)
	data := []byte(`{"hello":"world"}`)
	if _, err := b.Store.PutArtifact(ctx, j.ID, "result.json", "application/json", data); err != nil {
		t.Fatal(err)
	}
	a, got, err := b.Store.GetArtifact(ctx, j.ID, "result.json")
	if err != nil || !bytes.Equal(got, data) || a.ContentType != "application/json" || a.Size != int64(len(data)) {
		t.Fatalf("get artifact: %+v %q %v", a, got, err)
	}
	for _, bad := range []string{"../x", ".hidden", "a/b", "", "a b"} {
		if _, err := b.Store.PutArtifact(ctx, j.ID, bad, "text/plain", data); !errors.Is(err, broker.ErrBadArtifactName) {
			t.Errorf("name %q: %v, want ErrBadArtifactName", bad, err)
		}
	}
	if _, _, err := b.Store.GetArtifact(ctx, j.ID, "missing.txt"); !errors.Is(err, broker.ErrArtifactNotFound) {
		t.Fatalf("missing artifact: %v", err)
	}
}

func TestBadIDs(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	if _, _, err := b.Store.Get(ctx, "not-a-ulid"); !errors.Is(err, broker.ErrBadID) {
		t.Fatalf("bad id: %v", err)
	}
	if _, _, err := b.Store.Get(ctx, broker.NewID()); !errors.Is(err, broker.ErrNotFound) {
		t.Fatalf("unknown id: %v", err)
	}
}

func TestSecondServerOnSameDirFails(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	_, err := natsd.Start(natsd.Config{DataDir: b.Dir})
	if !errors.Is(err, natsd.ErrLocked) {
		t.Fatalf("second server: %v, want ErrLocked", err)
	}
}

func TestListenerNeedsCredentials(t *testing.T) {
	t.Parallel()
	_, err := natsd.Start(natsd.Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0"})
	if err == nil {
		t.Fatal("a listener without credentials must be refused")
	}
}

func TestNoTCPListenerByDefault(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	if u := b.Server.ClientURL(); u != "" {
		t.Fatalf("embedded server listens on %s without FOREMAN_NATS_LISTEN", u)
	}
	var _ *nats.Conn = b.Conn
}

// eventually checks cond at once and then every 10ms until it holds; it fails t with
// what if within passes first. cond runs on the test's goroutine and may call t.Fatal.
func eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	timeout := time.After(within)
	for !cond() {
		select {
		case <-tick.C:
		case <-timeout:
			t.Fatalf("%s: not within %v", what, within)
		}
	}
}

// JetStream's answers to a write refused for want of room, from the server's own disk to
// an account's limit on a shared NATS, are ErrStorageFull (a 503 with Retry-After), and a
// full queue ErrQueueFull; other errors pass unchanged.
func TestStorageErrors(t *testing.T) {
	t.Parallel()
	for code, want := range map[uint16]error{
		10023: broker.ErrStorageFull, // insufficient resources
		10047: broker.ErrStorageFull, // insufficient storage resources available
		10028: broker.ErrStorageFull, // insufficient memory resources available
		10002: broker.ErrStorageFull, // resource limits exceeded for account
		10077: broker.ErrQueueFull,   // maximum messages exceeded
		10059: nil,                   // stream not found
	} {
		err := broker.StorageErr(&jetstream.APIError{ErrorCode: jetstream.ErrorCode(code), Description: "x"})
		if want != nil && !errors.Is(err, want) || want == nil && (errors.Is(err, broker.ErrStorageFull) || errors.Is(err, broker.ErrQueueFull)) {
			t.Errorf("code %d: %v, want %v", code, err, want)
		}
	}
}

// An idempotent retry of a job still queued after the queue's duplicate window publishes
// no second message: the server would store it (the window dropped the first one's id),
// and the job would hold two places in the queue, counted twice against its bounds.
func TestResubmitAfterDuplicateWindowKeepsOneMessage(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) { c.DuplicateWindow = time.Second }))
	ctx := ctxT(t)
	j := submit(t, b.Store, "m", `{"model":"m"}`)
	// A probe published after the job, with an id of its own, is stored again only once the
	// server's window has dropped its id, and so the job's.
	probe := nats.NewMsg(broker.QueueSubject(token(t, "probe")))
	js := b.JetStream(t)
	first, err := js.PublishMsg(ctx, probe, jetstream.WithMsgID("probe"))
	if err != nil {
		t.Fatal(err)
	}
	var again *jetstream.PubAck
	eventually(t, 30*time.Second, "duplicate window passed", func() bool {
		again, err = js.PublishMsg(ctx, probe, jetstream.WithMsgID("probe"))
		if err != nil {
			t.Fatal(err)
		}
		return !again.Duplicate
	})
	for _, seq := range []uint64{first.Sequence, again.Sequence} {
		if err := b.Store.DeleteQueued(ctx, seq); err != nil {
			t.Fatal(err)
		}
	}
	got, err := b.Store.Resubmit(ctx, j.ID, asSent([]byte(`{"model":"m"}`)))
	if err != nil || got.ID != j.ID {
		t.Fatalf("resubmit: %+v, %v", got, err)
	}
	if n, err := b.Store.QueueLen(ctx); err != nil || n != 1 {
		t.Fatalf("queue holds %d messages (%v), want the job's one", n, err)
	}
	// A job whose message is gone (a crash between its two writes) is published again.
	d, err := b.Store.Next(ctx, token(t, "m"))
	if err != nil || d == nil || d.JobID != j.ID {
		t.Fatalf("next: %+v, %v", d, err)
	}
	if err := b.Store.DeleteQueued(ctx, d.Seq); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Store.Resubmit(ctx, j.ID, asSent([]byte(`{"model":"m"}`))); err != nil {
		t.Fatal(err)
	}
	if n, err := b.Store.QueueLen(ctx); err != nil || n != 1 {
		t.Fatalf("queue holds %d messages (%v), want the job's new one", n, err)
	}
}

// A job's age against the duplicate window is taken on the NATS server's clock: a job
// made through a foreman whose host clock was an hour ahead (its record's CreatedAt an
// hour ahead of this one's clock) and retried past the window through this one is looked
// for in the queue and found, not published a second time beside its first message.
func TestResubmitOfAJobFromAClockAheadKeepsOneMessage(t *testing.T) {
	t.Parallel()
	window := func(c *broker.Config) { c.DuplicateWindow = time.Second }
	b := brokertest.New(t, brokertest.WithStore(window))
	ctx := ctxT(t)
	ahead := broker.Config{Conn: b.Conn, Now: func() time.Time { return time.Now().Add(time.Hour) }}
	window(&ahead)
	other, err := broker.Open(ctx, ahead)
	if err != nil {
		t.Fatal(err)
	}
	j, err := other.Submit(ctx, &broker.Job{ID: other.NewID(), Model: "m", Kind: broker.KindChat}, []byte(`{"model":"m"}`))
	if err != nil {
		t.Fatal(err)
	}
	// A probe published after the job, with an id of its own, is stored again only once
	// the server's window has dropped its id, and so the job's.
	probe := nats.NewMsg(broker.QueueSubject(token(t, "probe")))
	js := b.JetStream(t)
	first, err := js.PublishMsg(ctx, probe, jetstream.WithMsgID("probe"))
	if err != nil {
		t.Fatal(err)
	}
	var again *jetstream.PubAck
	eventually(t, 30*time.Second, "duplicate window passed", func() bool {
		again, err = js.PublishMsg(ctx, probe, jetstream.WithMsgID("probe"))
		if err != nil {
			t.Fatal(err)
		}
		return !again.Duplicate
	})
	for _, seq := range []uint64{first.Sequence, again.Sequence} {
		if err := b.Store.DeleteQueued(ctx, seq); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := b.Store.Resubmit(ctx, j.ID, asSent([]byte(`{"model":"m"}`))); err != nil || got.ID != j.ID {
		t.Fatalf("resubmit: %+v, %v", got, err)
	}
	if n, err := b.Store.QueueLen(ctx); err != nil || n != 1 {
		t.Fatalf("queue holds %d messages (%v), want the job's one", n, err)
	}
}

// A requeued job's record is rewritten with its new queue message, so that both age
// from the requeue: the record left as old as the first message would expire while the
// job waits at the queue's end, and the job end in no state. It is rewritten however
// young: the store's reading of the server's clock may trail a stamp the server just
// made (shifted back here), and the requeue skipped the rewrite then.
func TestRequeueRewritesTheRecord(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	b.Store.ShiftServerClock(-time.Second)
	j := submit(t, b.Store, "tiny-a", `{"model":"tiny-a"}`)
	d, err := b.Store.Next(ctxT(t), token(t, "tiny-a"))
	if err != nil || d == nil {
		t.Fatalf("delivery: %v %v", d, err)
	}
	_, rev, before, err := b.Store.GetWritten(ctxT(t), j.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Store.Requeue(ctxT(t), d); err != nil {
		t.Fatal(err)
	}
	got, newRev, after, err := b.Store.GetWritten(ctxT(t), j.ID)
	if err != nil {
		t.Fatal(err)
	}
	if newRev <= rev || !after.After(before) || got.State != broker.StateQueued {
		t.Fatalf("record after the requeue: %s at revision %d written %v, before: revision %d written %v", got.State, newRev, after, rev, before)
	}
	again, err := b.Store.NextWait(ctxT(t), token(t, "tiny-a"), arrival)
	if err != nil || again == nil || again.JobID != j.ID || again.Seq == d.Seq {
		t.Fatalf("requeued message: %+v %v", again, err)
	}
}

// A refused id or artifact name is quoted in its error cut short at a rune's start: a
// request line can carry a megabyte of it, and the error goes back in a 400.
func TestRefusedNamesAreQuotedShort(t *testing.T) {
	t.Parallel()
	for _, err := range []error{
		broker.ValidateID(strings.Repeat("€", 100)),
		broker.ValidateArtifactName(strings.Repeat("€", 100)),
	} {
		msg := err.Error()
		if len(msg) > 120 || !utf8.ValidString(msg) || strings.Contains(msg, `\x`) || !strings.HasSuffix(msg, `"…`) || !strings.Contains(msg, "€€") {
			t.Errorf("error %q (%d bytes): want whole runes of the name's start quoted (no byte escapes) and marked cut", msg, len(msg))
		}
	}
	if err := broker.ValidateID("nope"); err.Error() != `invalid job id: "nope"` {
		t.Errorf("short id: %q, want it quoted whole", err)
	}
}

// A requeue whose ack of the old message fails removes that message all the same: its
// new copy holds the job's place. Left un-acked, on the job's last delivery (why the
// worker requeues) JetStream gave up on it at its ack wait, and the delivery limit's
// advisory failed the job while its copy waited or ran; on an earlier one it was
// delivered again beside the copy.
func TestRequeueWhoseAckFailsLeavesOneMessage(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	j := submit(t, b.Store, "tiny-a", `{"model":"tiny-a"}`)
	tok := token(t, "tiny-a")
	d, err := b.Store.Next(ctx, tok)
	if err != nil || d == nil {
		t.Fatalf("delivery: %v %v", d, err)
	}
	broker.FailAcks(d, errors.New("ack lost"))
	if err := b.Store.Requeue(ctx, d); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := b.Store.Queued(ctx, d.Seq); err != nil || ok {
		t.Fatalf("old message %d still queued (%v) after the requeue", d.Seq, err)
	}
	if n, err := b.Store.QueueLen(ctx); err != nil || n != 1 {
		t.Fatalf("queue holds %d messages (%v) after the requeue, want the job's new one", n, err)
	}
	again, err := b.Store.NextWait(ctx, tok, arrival)
	if err != nil || again == nil || again.JobID != j.ID || !again.Requeued {
		t.Fatalf("requeued delivery: %+v %v, want job %s requeued", again, err, j.ID)
	}
}
