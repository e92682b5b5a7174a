package broker_test

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

func exclusive(c *broker.Config) { c.Exclusive = true }

func submitSync(t *testing.T, st *broker.Store, model, gateway string) *broker.Job {
	t.Helper()
	j, err := st.Submit(ctxT(t), &broker.Job{Model: model, Kind: broker.KindChat, Sync: true, Gateway: gateway}, []byte(`{"model":"`+model+`"}`))
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	return j
}

// The start sweep cancels the queued sync jobs of dead gateways, takes them out of the
// queue, asks the worker to end the one that was running, and leaves async jobs and the
// sync jobs of the live gateway alone.
func TestCancelAbandonedCancelsOnlyDeadCallersSyncJobs(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t, brokertest.WithStore(exclusive))
	ctx := ctxT(t)
	dead := broker.NewID()
	running := submitSync(t, b.Store, "tiny-a", dead)
	async := submit(t, b.Store, "tiny-a", `{"model":"tiny-a"}`)
	queued := submitSync(t, b.Store, "tiny-b", dead)
	live := submitSync(t, b.Store, "tiny-b", b.Store.BootID())
	old := submitSync(t, b.Store, "tiny-b", "") // a record from before boot ids

	// The dead process had started the first job when it died.
	if d, err := b.Store.Next(ctx, token(t, "tiny-a")); err != nil || d == nil || d.JobID != running.ID {
		t.Fatalf("take the job: %v %v", d, err)
	}
	if _, _, err := b.Store.Modify(ctx, running.ID, func(j *broker.Job) error {
		j.State, j.Attempt = broker.StateWorking, 1
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	n, err := b.Store.CancelAbandoned(ctx)
	if err != nil || n != 2 {
		t.Fatalf("CancelAbandoned = %d, %v; want 2 (the queued and the running dead-caller jobs)", n, err)
	}
	for _, c := range []struct {
		job        *broker.Job
		state      broker.State
		err, req   string
		stillThere bool
	}{
		{running, broker.StateWorking, "", broker.CallerGoneReason, true},
		{queued, broker.StateCanceled, broker.CallerGoneReason, "", false},
		{async, broker.StateQueued, "", "", true},
		{live, broker.StateQueued, "", "", true},
		{old, broker.StateQueued, "", "", true},
	} {
		j, _, err := b.Store.Get(ctx, c.job.ID)
		if err != nil {
			t.Fatal(err)
		}
		if j.State != c.state || j.Error != c.err || j.CancelRequested != c.req {
			t.Errorf("job %s: state %s error %q cancel_requested %q; want %s %q %q", c.job.ID, j.State, j.Error, j.CancelRequested, c.state, c.err, c.req)
		}
	}
	if n, err := b.Store.QueueLen(ctx); err != nil || n != 4 {
		t.Errorf("queue holds %d (%v), want 4: only the queued dead-caller job leaves", n, err)
	}
}

// On a shared store (external NATS) the sync jobs of another foreman are left alone
// while it is present, and canceled once it is gone: withdrawn, never announced, or
// silent for longer than PresenceTTL (a crash).
func TestCancelAbandonedOnASharedStoreFollowsPresence(t *testing.T) {
	t.Parallel()
	// Heartbeats 1.3 s apart: a stall of the machine shorter than 2.6 s drops no one.
	const presence = 4 * time.Second
	ttl := func(c *broker.Config) { c.PresenceTTL = presence }
	b := brokertest.New(t, brokertest.WithStore(ttl))
	ctx := ctxT(t)
	other, err := broker.Open(ctx, broker.Config{Conn: b.Conn, PresenceTTL: presence})
	if err != nil {
		t.Fatal(err)
	}
	crashed, err := broker.Open(ctx, broker.Config{Conn: b.Conn, PresenceTTL: presence})
	if err != nil {
		t.Fatal(err)
	}
	actx, stopAnnounce := context.WithCancel(ctx)
	announcing := make(chan struct{})
	go func() { defer close(announcing); _ = other.Announce(actx) }()
	t.Cleanup(func() { stopAnnounce(); <-announcing })

	live := submitSync(t, b.Store, "tiny-a", other.BootID())
	silent := submitSync(t, b.Store, "tiny-a", crashed.BootID())
	unknown := submitSync(t, b.Store, "tiny-a", broker.NewID())
	if b.Store.CallerGone(ctx, live) || b.Store.CallerGone(ctx, silent) {
		t.Fatal("CallerGone for foremen that announced themselves")
	}
	if !b.Store.CallerGone(ctx, unknown) {
		t.Error("CallerGone false for a boot id that never announced itself")
	}
	// The crashed foreman's key expires a PresenceTTL after its last heartbeat; the one
	// that keeps announcing stays.
	eventually(t, 15*time.Second, "a silent foreman gone after PresenceTTL", func() bool {
		return b.Store.CallerGone(ctx, silent)
	})
	if b.Store.CallerGone(ctx, live) {
		t.Fatal("a foreman that keeps announcing itself dropped out")
	}
	n, err := b.Store.CancelAbandoned(ctx)
	if err != nil || n != 2 {
		t.Fatalf("CancelAbandoned = %d, %v; want 2 (the silent and the unknown foreman's jobs)", n, err)
	}
	if j, _, _ := b.Store.Get(ctx, live.ID); j.State != broker.StateQueued {
		t.Errorf("the present foreman's sync job is %s, want queued", j.State)
	}
	// A foreman that stops in order withdraws at once.
	stopAnnounce()
	<-announcing
	if !b.Store.CallerGone(ctx, live) {
		t.Error("a foreman that stopped in order still counts as present")
	}
}

// With the store owned exclusively, the job a crashed process had taken is deliverable
// as soon as the store is open again, not after AckWait.
func TestExclusiveStoreRedeliversTakenJobAtOnce(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) {
		c.Exclusive, c.AckWait = true, 10*time.Minute
	}))
	j := submit(t, b.Store, "tiny-a", `{"model":"tiny-a"}`)
	tok := token(t, "tiny-a")
	if d, err := b.Store.Next(ctxT(t), tok); err != nil || d == nil {
		t.Fatalf("first delivery: %v %v", d, err)
	}
	b.Restart(t) // a crash: no ack
	// No polling needed: the job is deliverable the moment the store is open. A deadline
	// far below AckWait turns the old behaviour into a clear failure.
	d, err := b.Store.NextWait(ctxT(t), tok, 10*time.Second)
	if err != nil || d == nil {
		t.Fatalf("the taken job was not redelivered at once after the restart (AckWait 10m): %v %v", d, err)
	}
	if d.JobID != j.ID {
		t.Fatalf("redelivered %s, want %s", d.JobID, j.ID)
	}
}

// A foreman that dies between the two writes of a submit leaves a record "queued" with
// no queue message. On an exclusive store the next start cancels such a sync job (its
// caller is gone and nothing else would end it); an async one stays queued, for a submit
// retried with the same id to queue it.
func TestCancelAbandonedEndsSyncJobsThatNeverReachedTheQueue(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t, brokertest.WithStore(exclusive))
	ctx := ctxT(t)
	sync := submitSync(t, b.Store, "tiny-a", b.Store.BootID())
	async, err := b.Store.Submit(ctx, &broker.Job{Model: "tiny-a", Kind: broker.KindChat, Idempotency: broker.IdempotencyRef("retry-me")},
		[]byte(`{"model":"tiny-a"}`))
	if err != nil {
		t.Fatal(err)
	}
	claim(t, b.Store, "retry-me", async.ID)
	// The crash: neither message made it into the queue.
	for range 2 {
		p, ok, err := b.Store.Oldest(ctx, 0)
		if err != nil || !ok {
			t.Fatalf("oldest: %v %v", ok, err)
		}
		if err := b.Store.DeleteQueued(ctx, p.Seq); err != nil {
			t.Fatal(err)
		}
	}
	b.Restart(t)

	n, err := b.Store.CancelAbandoned(ctx)
	if err != nil || n != 1 {
		t.Fatalf("CancelAbandoned = %d, %v; want 1", n, err)
	}
	if j, _, _ := b.Store.Get(ctx, sync.ID); j.State != broker.StateCanceled || j.Error != broker.CallerGoneReason {
		t.Errorf("sync job never queued: %s (%q), want canceled (%s)", j.State, j.Error, broker.CallerGoneReason)
	}
	if j, _, _ := b.Store.Get(ctx, async.ID); j.State != broker.StateQueued {
		t.Errorf("async job never queued, submitted with an Idempotency-Key: %s, want queued", j.State)
	}
	// A retried submit of the async job (its key's claim names it) queues it after all.
	if _, err := b.Store.Submit(ctx, &broker.Job{ID: async.ID, Model: "tiny-a", Kind: broker.KindChat}, []byte(`{"model":"tiny-a"}`)); err != nil {
		t.Fatal(err)
	}
	if n, err := b.Store.QueueLen(ctx); err != nil || n != 1 {
		t.Errorf("queue holds %d (%v), want the resubmitted async job", n, err)
	}
}

// An async job submitted without an Idempotency-Key whose foreman died between the two
// writes of its submit (its record stored, its queue message not) can never be queued
// again: no retry of its caller (who got no 202) can name it. The start's sweep ends it
// failed, saying so, rather than leave it listed queued, never to run, for a job TTL.
func TestCancelAbandonedEndsAKeylessAsyncJobThatNeverReachedTheQueue(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t, brokertest.WithStore(exclusive))
	ctx := ctxT(t)
	keyless := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat}
	b.CreateRecord(t, keyless) // the crash: its queue message was never stored
	keyed := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat, Idempotency: broker.IdempotencyRef("k")}
	b.CreateRecord(t, keyed)
	claim(t, b.Store, "k", keyed.ID) // its key's claim names it: a retry queues it
	queued := submit(t, b.Store, "tiny-a", `{"model":"tiny-a"}`)
	b.Restart(t)

	if _, err := b.Store.CancelAbandoned(ctx); err != nil {
		t.Fatal(err)
	}
	if j, _, _ := b.Store.Get(ctx, keyless.ID); j.State != broker.StateFailed || j.Error != broker.UnqueuedReason {
		t.Errorf("keyless async job never queued: %s (%q), want failed (%s)", j.State, j.Error, broker.UnqueuedReason)
	}
	for _, id := range []string{keyed.ID, queued.ID} {
		if j, _, _ := b.Store.Get(ctx, id); j.State != broker.StateQueued {
			t.Errorf("job %s: %s, want queued (a keyed retry may queue it, or its message waits)", id, j.State)
		}
	}
	if n, err := b.Store.QueueLen(ctx); err != nil || n != 1 {
		t.Errorf("queue holds %d (%v), want the one queued job", n, err)
	}
}

// claim binds Idempotency-Key key to job id, as a submit with that key does first.
func claim(t *testing.T, st *broker.Store, key, id string) {
	t.Helper()
	if _, created, err := st.ClaimIdempotencyKey(ctxT(t), key, broker.IdempotencyClaim{JobID: id, Within: time.Minute}); err != nil || !created {
		t.Fatalf("claim %q for %s: created %v, %v", key, id, created, err)
	}
}

// A job submitted with an Idempotency-Key, cut between its submit's two writes, stays
// queued only while a retry with its key can queue it: while the key's claim names it.
// One whose claim its failed submit released (the store refused the take-back of its
// record too), or which another request's job holds since, or which aged out, is
// reached by no retry: listed queued, never to run, until the job TTL. The start's sweep
// ends it failed as it does a keyless one.
func TestCancelAbandonedEndsAKeyedJobNoRetryCanQueue(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t, brokertest.WithStore(exclusive))
	ctx := ctxT(t)
	job := func(key string) *broker.Job {
		j := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat, Idempotency: broker.IdempotencyRef(key)}
		b.CreateRecord(t, j) // the crash: its queue message was never stored
		return j
	}
	released := job("released")
	claim(t, b.Store, "released", released.ID)
	if err := b.Store.ReleaseIdempotencyKey(ctx, "released", released.ID); err != nil {
		t.Fatal(err)
	}
	taken := job("taken")
	claim(t, b.Store, "taken", broker.NewID()) // a later request's job holds the key
	unclaimed := job("unclaimed")              // aged out
	held := job("held")
	claim(t, b.Store, "held", held.ID)
	b.Restart(t)

	if _, err := b.Store.CancelAbandoned(ctx); err != nil {
		t.Fatal(err)
	}
	for _, j := range []*broker.Job{released, taken, unclaimed} {
		if got, _, _ := b.Store.Get(ctx, j.ID); got.State != broker.StateFailed || got.Error != broker.UnqueuedReason {
			t.Errorf("keyed job %s no retry can queue: %s (%q), want failed (%s)", j.ID, got.State, got.Error, broker.UnqueuedReason)
		}
	}
	if got, _, _ := b.Store.Get(ctx, held.ID); got.State != broker.StateQueued {
		t.Errorf("keyed job whose claim names it: %s (%q), want queued for its retry", got.State, got.Error)
	}
}

// consumerSum is the checksum file the embedded server keeps beside a queue consumer's
// config (…/streams/FOREMAN_QUEUE/obs/<consumer>/meta.sum).
func consumerSum(t *testing.T, dir, tok string) string {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "jetstream", "*", "streams", broker.QueueStream, "obs", broker.ConsumerName(tok), "meta.sum"))
	if len(files) != 1 {
		t.Fatalf("checksum file of consumer %s: %v", broker.ConsumerName(tok), files)
	}
	return files[0]
}

// A queue consumer whose checksum file is missing (a kill between the two files the
// server writes when it creates a consumer) is not recovered by the server: it logs
// "Missing consumer checksum" and skips it. Created again, it comes back with the state
// it had on disk, a taken job among it. With the store owned exclusively, that job is
// deliverable as soon as the store is open, as for a consumer the server did recover,
// and the consumer is written afresh, checksum included.
func TestExclusiveStoreRedeliversJobOfAConsumerTheServerSkipped(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name string
		// atCreation: the checksum goes right after the consumer is created (the crash),
		// and the next process takes the job on it; else it goes while the job is taken.
		atCreation bool
	}{
		{"checksum lost at creation", true},
		{"checksum lost while the job is taken", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) {
				c.Exclusive, c.AckWait = true, 10*time.Minute
			}))
			tok := token(t, "tiny-a")
			if c.atCreation {
				if d, err := b.Store.Next(ctxT(t), tok); err != nil || d != nil { // creates the consumer
					t.Fatalf("empty queue: %v %v", d, err)
				}
				b.Stop()
				if err := os.Remove(consumerSum(t, b.Dir, tok)); err != nil {
					t.Fatal(err)
				}
				b.Restart(t)
			}
			j := submit(t, b.Store, "tiny-a", `{"model":"tiny-a"}`)
			if d, err := b.Store.NextWait(ctxT(t), tok, arrival); err != nil || d == nil || d.JobID != j.ID {
				t.Fatalf("first delivery: %v %v", d, err)
			}
			b.Stop() // the crash: no ack
			if !c.atCreation {
				if err := os.Remove(consumerSum(t, b.Dir, tok)); err != nil {
					t.Fatal(err)
				}
			}
			b.Restart(t)
			// A deadline far below AckWait turns a wait for it into a clear failure.
			d, err := b.Store.NextWait(ctxT(t), tok, 10*time.Second)
			if err != nil || d == nil {
				t.Fatalf("the taken job was not redelivered at once after the restart (AckWait 10m): %v %v", d, err)
			}
			if d.JobID != j.ID {
				t.Fatalf("redelivered %s, want %s", d.JobID, j.ID)
			}
			// The server recovers the consumer at its next start.
			consumerSum(t, b.Dir, tok)
		})
	}
}

// A running record's runner is gone only on evidence (ADR-0064): the presence of the
// foreman that started its current attempt lapsed. Not when the runner fields name an
// earlier attempt (a foreman from before them started this one, carrying them), not for
// this process's own runs, not on a store of this process's own, not for a record
// without a runner or one that no longer runs.
func TestRunnerGoneOnlyOnEvidence(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	excl, err := broker.Open(ctx, broker.Config{Conn: b.Conn, Exclusive: true})
	if err != nil {
		t.Fatal(err)
	}
	dead := broker.NewID() // never present
	j := submit(t, b.Store, "tiny-a", `{"model":"tiny-a"}`)
	if b.Store.RunnerGone(ctx, j) {
		t.Error("a queued job's runner is gone")
	}
	running := *j
	running.State, running.Attempt = broker.StateWorking, 1
	if b.Store.RunnerGone(ctx, &running) {
		t.Error("the runner of a record that names none is gone")
	}
	running.Runner, running.RunnerBoot, running.RunnerAttempt = "studio", dead, 1
	if name, boot := running.CurrentRunner(); name != "studio" || boot != dead {
		t.Errorf("current runner %q %q, want studio %q", name, boot, dead)
	}
	if !b.Store.RunnerGone(ctx, &running) {
		t.Error("a runner whose foreman has no presence is not gone")
	}
	if excl.RunnerGone(ctx, &running) {
		t.Error("a runner is gone on a store of this process's own")
	}
	later := running
	later.Attempt = 2 // started by a foreman that names no runner
	if name, boot := later.CurrentRunner(); name != "" || boot != "" || b.Store.RunnerGone(ctx, &later) {
		t.Errorf("runner %q %q (gone %v) of attempt 2 named by attempt 1's start, want none", name, boot, b.Store.RunnerGone(ctx, &later))
	}
	own := running
	own.RunnerBoot = b.Store.BootID()
	if b.Store.RunnerGone(ctx, &own) {
		t.Error("this process's own run is gone")
	}
	ended := running
	ended.State = broker.StateDone
	if b.Store.RunnerGone(ctx, &ended) {
		t.Error("an ended job's runner is gone")
	}
	bad := running
	bad.RunnerBoot = "not a key!"
	if b.Store.RunnerGone(ctx, &bad) {
		t.Error("a runner boot id that is no presence key counts as gone")
	}
}

// A queue message can outlive its ack: with the disk full, the queue stream fails a write
// and from then on removes nothing, so a job the worker finishes and acks moves its
// consumer's ack floor past a message that stays in the stream. Nothing delivers it again
// (the ack floor is past it), yet it counts as waiting in the queue view and its depth,
// and against FOREMAN_MAX_QUEUE, until the job TTL. On an exclusive store the next start
// makes such a consumer deliver it again, so the worker drops the message of the ended job.
// The state is made here by moving the ack floor past the messages, as that ack does.
func TestExclusiveStoreRedeliversMessagesLeftBelowTheAckFloor(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) {
		c.Exclusive, c.AckWait = true, 10*time.Minute
	}))
	tok := token(t, "tiny-a")
	if d, err := b.Store.Next(ctxT(t), tok); err != nil || d != nil { // creates the consumer
		t.Fatalf("empty queue: %v %v", d, err)
	}
	first := submit(t, b.Store, "tiny-a", `{"model":"tiny-a"}`)
	second := submit(t, b.Store, "tiny-a", `{"model":"tiny-a"}`)
	js := b.JetStream(t)
	q, err := js.Stream(ctxT(t), broker.QueueStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := q.Info(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.ResetConsumerToSequence(ctxT(t), broker.QueueStream, broker.ConsumerName(tok), info.State.LastSeq+1); err != nil {
		t.Fatalf("move the ack floor past the messages: %v", err)
	}
	if d, err := b.Store.Next(ctxT(t), tok); err != nil || d != nil {
		t.Fatalf("a message below the ack floor was delivered before the restart: %v %v", d, err)
	}
	b.Restart(t)
	got := map[string]bool{}
	for range 2 {
		d, err := b.Store.NextWait(ctxT(t), tok, 10*time.Second)
		if err != nil || d == nil {
			t.Fatalf("after the restart the messages below the ack floor were not delivered (got %v): %v %v", got, d, err)
		}
		got[d.JobID] = true
	}
	if !got[first.ID] || !got[second.ID] {
		t.Fatalf("delivered %v, want %s and %s", got, first.ID, second.ID)
	}
}

// At an exclusive start, a queue whose job was running when the last process ended, and
// one that is empty, hold no message below their consumers' ack floors: the running job
// is made deliverable again, and nothing is reported stranded (a write the store
// failed), which would send the operator looking for a full disk that never was.
func TestExclusiveStoreReportsNoStrandedMessagesWithoutThem(t *testing.T) {
	t.Parallel()
	var logs lockedLog
	log := slog.New(slog.NewTextHandler(&logs, nil))
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) {
		c.Exclusive, c.AckWait, c.Logger = true, 10*time.Minute, log
	}))
	empty := token(t, "tiny-b")
	if d, err := b.Store.Next(ctxT(t), empty); err != nil || d != nil { // creates the consumer
		t.Fatalf("empty queue: %v %v", d, err)
	}
	tok := token(t, "tiny-a")
	j := submit(t, b.Store, "tiny-a", `{"model":"tiny-a"}`)
	if d, err := b.Store.NextWait(ctxT(t), tok, arrival); err != nil || d == nil || d.JobID != j.ID {
		t.Fatalf("lease the job: %v %v", d, err)
	}
	b.Restart(t)
	if d, err := b.Store.NextWait(ctxT(t), tok, 10*time.Second); err != nil || d == nil || d.JobID != j.ID {
		t.Fatalf("the job running at the restart was not delivered again: %v %v", d, err)
	}
	if strings.Contains(logs.String(), "below their consumer's ack floor") {
		t.Errorf("messages reported stranded where none were:\n%s", logs.String())
	}
}

// An exclusive start makes no queue consumer: a backlog of many models, programs and
// classes has hundreds of queue keys no fetch has made a consumer for yet, and making
// each afresh at every start (created, deleted, created: three writes a key) took
// seconds before the first job ran (7.6 s for 361 keys). The consumers come at their
// keys' first fetch, as on the first start, and every job is delivered.
func TestExclusiveStartMakesNoConsumerForKeysNeverFetched(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t, brokertest.WithStore(exclusive))
	const keys = 12
	var tokens []string
	for i := range keys {
		model := "scale-" + string(rune('a'+i))
		submit(t, b.Store, model, `{"model":"`+model+`"}`)
		tokens = append(tokens, token(t, model))
	}
	b.Restart(t)
	js := b.JetStream(t)
	queue, err := js.Stream(ctxT(t), broker.QueueStream)
	if err != nil {
		t.Fatal(err)
	}
	count := func() int {
		n := 0
		names := queue.ConsumerNames(ctxT(t))
		for range names.Name() {
			n++
		}
		if err := names.Err(); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := count(); n != 0 {
		t.Fatalf("after the start: %d queue consumers, want none (no key was fetched from)", n)
	}
	for _, tok := range tokens {
		if d, err := b.Store.NextWait(ctxT(t), tok, 10*time.Second); err != nil || d == nil {
			t.Fatalf("queue %s after the start: %v %v", tok, d, err)
		}
	}
	if n := count(); n != keys {
		t.Fatalf("after a fetch of each key: %d queue consumers, want %d", n, keys)
	}
}

// A skipped consumer's key stays noted until it was made afresh: a delete that fails (the
// server's answer lost, the caller gone) leaves it to the next create, which finds the
// taken job's state again and makes it afresh then. Before, the key was forgotten at
// the first create, and the job waited out AckWait.
func TestExclusiveStoreRenewsASkippedConsumerAfterAFailedDelete(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) {
		c.Exclusive, c.AckWait = true, 10*time.Minute
	}))
	tok := token(t, "tiny-a")
	j := submit(t, b.Store, "tiny-a", `{"model":"tiny-a"}`)
	if d, err := b.Store.NextWait(ctxT(t), tok, arrival); err != nil || d == nil || d.JobID != j.ID {
		t.Fatalf("first delivery: %v %v", d, err)
	}
	b.Stop() // the crash: no ack
	if err := os.Remove(consumerSum(t, b.Dir, tok)); err != nil {
		t.Fatal(err)
	}
	b.Restart(t)
	ctx, cancel := context.WithCancel(ctxT(t))
	b.Store.SetRenewing(cancel)
	if d, err := b.Store.Next(ctx, tok); err == nil || d != nil {
		t.Fatalf("a fetch whose renew could not delete: %v %v, want its error", d, err)
	}
	b.Store.SetRenewing(nil)
	// A deadline far below AckWait turns a wait for it into a clear failure.
	d, err := b.Store.NextWait(ctxT(t), tok, 10*time.Second)
	if err != nil || d == nil || d.JobID != j.ID {
		t.Fatalf("the taken job was not redelivered at once after a failed renew (AckWait 10m): %v %v", d, err)
	}
}
