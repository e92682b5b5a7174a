package broker_test

import (
	"errors"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// A running job's cancel is only a request: the worker writes its terminal state.
func TestCancelRunningOnlyRequests(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	for _, state := range []broker.State{broker.StateLoading, broker.StateWorking} {
		j := submit(t, b.Store, "m", `{}`)
		if _, _, err := b.Store.Modify(ctx, j.ID, func(j *broker.Job) error { j.State = state; return nil }); err != nil {
			t.Fatal(err)
		}
		got, err := b.Store.Cancel(ctx, j.ID, "user asked")
		if err != nil {
			t.Fatal(err)
		}
		if got.State != state || got.CancelRequested != "user asked" || got.Error != "" {
			t.Fatalf("%s: Cancel returned %s request %q error %q", state, got.State, got.CancelRequested, got.Error)
		}
		rec, rev, err := b.Store.Get(ctx, j.ID)
		if err != nil || rec.State != state || rec.CancelRequested != "user asked" {
			t.Fatalf("%s: record %+v %v", state, rec, err)
		}
		// A second request keeps the first reason and writes nothing.
		again, err := b.Store.Cancel(ctx, j.ID, "again")
		if err != nil || again.CancelRequested != "user asked" || again.State != state {
			t.Fatalf("%s: second cancel %+v %v", state, again, err)
		}
		if _, rev2, _ := b.Store.Get(ctx, j.ID); rev2 != rev {
			t.Errorf("%s: a repeated request wrote the record (rev %d → %d)", state, rev, rev2)
		}
	}
	// The running job's queue message stays: its worker acks it when it ends the job.
	if n, _ := b.Store.QueueLen(ctx); n != 2 {
		t.Errorf("queue holds %d, want 2 (a cancel request removes nothing)", n)
	}

	// Without a reason the request still counts.
	j := submit(t, b.Store, "m", `{}`)
	if _, _, err := b.Store.Modify(ctx, j.ID, func(j *broker.Job) error { j.State = broker.StateWorking; return nil }); err != nil {
		t.Fatal(err)
	}
	if got, err := b.Store.Cancel(ctx, j.ID, ""); err != nil || got.CancelRequested != broker.DefaultCancelReason {
		t.Fatalf("cancel without reason: %+v %v", got, err)
	}
	// Ended by its worker, the job refuses any further cancel.
	if _, _, err := b.Store.Modify(ctx, j.ID, func(j *broker.Job) error { j.State = broker.StateDone; return nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Store.Cancel(ctx, j.ID, "late"); !errors.Is(err, broker.ErrTerminal) {
		t.Fatalf("cancel of a done job: %v, want ErrTerminal", err)
	}
}

// A retrying job waits in the queue between attempts: it is canceled at once, like a
// queued one.
func TestCancelRetryingCancelsAtOnce(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	j := submit(t, b.Store, "m", `{}`)
	if _, _, err := b.Store.Modify(ctx, j.ID, func(j *broker.Job) error { j.State = broker.StateRetrying; return nil }); err != nil {
		t.Fatal(err)
	}
	got, err := b.Store.Cancel(ctx, j.ID, "user")
	if err != nil || got.State != broker.StateCanceled || got.Error != "user" || got.CancelRequested != "" {
		t.Fatalf("cancel retrying: %+v %v", got, err)
	}
	if n, _ := b.Store.QueueLen(ctx); n != 0 {
		t.Errorf("queue holds %d after canceling the retrying job", n)
	}
}

// ModifyFrom writes from the record it is given when nobody wrote it since (the next
// revision follows at once), and applies fn to the current record when somebody did.
func TestModifyFromRereadsOnConflict(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	j := submit(t, b.Store, "m", `{}`)
	cur, rev, err := b.Store.Get(ctx, j.ID)
	if err != nil {
		t.Fatal(err)
	}
	got, rev2, err := b.Store.ModifyFrom(ctx, cur, rev, func(j *broker.Job) error { j.Attempt++; return nil })
	if err != nil || got.Attempt != 1 || rev2 <= rev {
		t.Fatalf("write from a current record: %+v rev %d→%d %v", got, rev, rev2, err)
	}
	// cur is stale now: the write must see attempt 1, not cur's 0.
	var seen int
	got, _, err = b.Store.ModifyFrom(ctx, cur, rev, func(j *broker.Job) error { seen = j.Attempt; j.Attempt++; return nil })
	if err != nil || seen != 1 || got.Attempt != 2 {
		t.Fatalf("write from a stale record: fn saw attempt %d, wrote %+v, %v; want 1 and 2", seen, got, err)
	}
	// A guard that refuses the current record stops the write.
	stop := errors.New("stop")
	if _, _, err := b.Store.ModifyFrom(ctx, cur, rev, func(j *broker.Job) error {
		if j.Attempt == 2 {
			return stop
		}
		return nil
	}); !errors.Is(err, stop) {
		t.Fatalf("refusing guard: %v, want stop", err)
	}
}

// A record write whose answer is lost (stored, but the try timed out, as during a leader
// election) and that is retried meets its own stored write: it is done, not applied a
// second time (a start counted as two attempts).
func TestWriteWithLostAnswerAppliesOnce(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	j := submit(t, b.Store, "m", `{}`)
	b.Store.LoseUpdateAnswer()
	calls := 0
	got, rev, err := b.Store.Modify(ctx, j.ID, func(j *broker.Job) error {
		calls++
		j.State = broker.StateWorking
		j.Attempt++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	rec, recRev, err := b.Store.Get(ctx, j.ID)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Attempt != 1 || got.Attempt != 1 || recRev != rev {
		t.Fatalf("attempt stored %d, returned %d (fn ran %d times); revision %d, returned %d; want attempt 1 at the stored revision",
			rec.Attempt, got.Attempt, calls, recRev, rev)
	}
}
