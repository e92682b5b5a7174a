package broker_test

import (
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// queueDir is the directory of the queue stream in the embedded server's data dir.
func queueDir(b *brokertest.Bundle) string {
	return filepath.Join(b.Dir, "jetstream", "FOREMAN", "streams", broker.QueueStream)
}

// restartWithoutQueue stops b's server, removes the queue's directory, starts it again
// and runs the start's sweep, as foreman's start does.
func restartWithoutQueue(t *testing.T, b *brokertest.Bundle) {
	t.Helper()
	b.Stop()
	if err := os.RemoveAll(queueDir(b)); err != nil {
		t.Fatal(err)
	}
	b.Restart(t)
	if _, err := b.Store.CancelAbandoned(ctxT(t)); err != nil {
		t.Fatal(err)
	}
}

// A power cut or a full disk can leave the queue's files damaged: nats-server cuts a
// block's unreadable end off as it starts, or makes a queue whose directory is gone
// anew, and says nothing that names a job. The records of the jobs whose messages went
// with it would wait for ever (and vanish at the job TTL); the start ends them failed,
// with the reason, and logs the damage. Jobs whose messages survived stay queued.
func TestStartOnADamagedQueueEndsTheJobsItLost(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name   string
		damage func(t *testing.T, dir string)
		lost   int // of the three jobs, the last ones lost
		logged string
	}{
		{"the last block's end cut", func(t *testing.T, dir string) {
			blocks, _ := filepath.Glob(filepath.Join(dir, "msgs", "*.blk"))
			slices.Sort(blocks)
			last := blocks[len(blocks)-1]
			fi, err := os.Stat(last)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(last, fi.Size()-20); err != nil {
				t.Fatal(err)
			}
		}, 1, "cut off the unreadable end of a stream"},
		{"the queue's directory removed", func(t *testing.T, dir string) {
			if err := os.RemoveAll(dir); err != nil {
				t.Fatal(err)
			}
		}, 3, ""},
		{"no damage", func(*testing.T, string) {}, 0, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			var logs lockedLog
			b := brokertest.New(t, brokertest.WithStore(func(cfg *broker.Config) {
				cfg.Exclusive, cfg.Logger = true, slog.New(slog.NewTextHandler(&logs, nil))
			}))
			ctx := ctxT(t)
			var jobs []*broker.Job
			for range 3 {
				jobs = append(jobs, submit(t, b.Store, "tiny-a", `{"model":"tiny-a"}`))
			}
			b.Stop()
			c.damage(t, queueDir(b))
			b.Restart(t)
			if _, err := b.Store.CancelAbandoned(ctx); err != nil {
				t.Fatal(err)
			}
			for i, j := range jobs {
				got, _, err := b.Store.Get(ctx, j.ID)
				if err != nil {
					t.Fatal(err)
				}
				if lost := i >= len(jobs)-c.lost; lost && (got.State != broker.StateFailed || got.Error != broker.LostReason) {
					t.Errorf("job %d, its message lost: %s (%q); want failed (%s)", i, got.State, got.Error, broker.LostReason)
				} else if !lost && got.State != broker.StateQueued {
					t.Errorf("job %d, its message kept: %s (%q); want queued", i, got.State, got.Error)
				}
			}
			if c.lost > 0 && !strings.Contains(logs.String(), "job lost: its queue message is gone") {
				t.Errorf("no job logged lost:\n%s", logs.String())
			}
			if c.logged != "" && !strings.Contains(logs.String(), c.logged) {
				t.Errorf("the damage not logged (%q):\n%s", c.logged, logs.String())
			}
			if c.lost == 0 && strings.Contains(logs.String(), "damaged") {
				t.Errorf("damage logged where there was none:\n%s", logs.String())
			}
		})
	}
}

// A queue made anew at one start (its directory removed) is no sign of damage at the
// next: an async job that waits without a queue message then (its foreman died between
// the two writes of its submit) stays queued, for a submit retried with its key, as on a
// data directory that never was damaged. It ended failed as lost at every later start.
func TestAQueueMadeAnewIsSuspectAtThatStartOnly(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t, brokertest.WithStore(func(cfg *broker.Config) { cfg.Exclusive = true }))
	ctx := ctxT(t)
	lost := submit(t, b.Store, "tiny-a", `{"model":"tiny-a"}`)
	restartWithoutQueue(t, b)
	if j, _, _ := b.Store.Get(ctx, lost.ID); j.State != broker.StateFailed {
		t.Fatalf("job of the removed queue: %s, want failed", j.State)
	}
	// Submitted with an Idempotency-Key whose claim names it: only such a job waits for
	// a retry without its queue message (a keyless one ends failed, ADR-0076).
	async, err := b.Store.Submit(ctx, &broker.Job{Model: "tiny-a", Kind: broker.KindChat, Idempotency: broker.IdempotencyRef("made-anew")},
		[]byte(`{"model":"tiny-a"}`))
	if err != nil {
		t.Fatal(err)
	}
	claim(t, b.Store, "made-anew", async.ID)
	p, ok, err := b.Store.Oldest(ctx, 0)
	if err != nil || !ok {
		t.Fatalf("oldest: %v %v", ok, err)
	}
	if err := b.Store.DeleteQueued(ctx, p.Seq); err != nil { // the crash between the writes
		t.Fatal(err)
	}
	b.Restart(t)
	if _, err := b.Store.CancelAbandoned(ctx); err != nil {
		t.Fatal(err)
	}
	if j, _, _ := b.Store.Get(ctx, async.ID); j.State != broker.StateQueued {
		t.Errorf("async job never queued, a start later: %s (%q), want queued", j.State, j.Error)
	}
}

// A job that was running when its foreman died loses its queue message with a damaged
// queue as a queued one does: nothing would ever run it again. The start ends it failed
// as lost too, and drops its request body stored apart, which nothing would read.
func TestStartOnADamagedQueueEndsARunningJobItLost(t *testing.T) {
	t.Parallel()
	b := newResubmitBundle(t, brokertest.WithStore(func(cfg *broker.Config) { cfg.Exclusive = true }))
	ctx := ctxT(t)
	j := submitLarge(t, b, "m")
	if _, _, err := b.Store.Modify(ctx, j.ID, func(j *broker.Job) error {
		j.State = broker.StateWorking
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	restartWithoutQueue(t, b)
	got, _, err := b.Store.Get(ctx, j.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != broker.StateFailed || got.Error != broker.LostReason {
		t.Errorf("running job, its message lost: %s (%q); want failed (%s)", got.State, got.Error, broker.LostReason)
	}
	if info := bodyInfo(t, b, j.BodyRef); info != nil {
		t.Errorf("the lost job's body is still stored: %+v", info)
	}
}

// A start whose job records are gone (their stream's directory removed) while the queue
// still holds jobs says so: those jobs cannot run, and nothing else names the cause.
func TestStartWithoutTheJobRecordsSaysSo(t *testing.T) {
	t.Parallel()
	var logs lockedLog
	b := brokertest.New(t, brokertest.WithStore(func(cfg *broker.Config) {
		cfg.Exclusive, cfg.Logger = true, slog.New(slog.NewTextHandler(&logs, nil))
	}))
	submit(t, b.Store, "tiny-a", `{"model":"tiny-a"}`)
	b.Stop()
	if strings.Contains(logs.String(), "job records are gone") {
		t.Fatalf("records said gone before they were:\n%s", logs.String())
	}
	if err := os.RemoveAll(filepath.Join(filepath.Dir(queueDir(b)), "KV_"+broker.JobsBucket)); err != nil {
		t.Fatal(err)
	}
	b.Restart(t)
	if !strings.Contains(logs.String(), "job records are gone") {
		t.Errorf("the records' loss not logged:\n%s", logs.String())
	}
}
