package broker_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// TestPendingDeliveries: a pending delivery is created once (a second add keeps the
// stored progress), updated at the revision read (a write at an older one is a
// conflict), listed in job and revision order, survives a restart, and is gone once
// finished.
func TestPendingDeliveries(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	a, z := broker.NewID(), broker.NewID()
	body := []byte(`{"job_id":"x","state":"done"}`)
	var revA3 uint64
	for _, p := range []broker.PendingDelivery{{JobID: z, Rev: 9, Body: body}, {JobID: a, Rev: 12, Body: body}, {JobID: a, Rev: 3, Body: body}} {
		rev, created, err := b.Store.AddPendingDelivery(ctx, p)
		if err != nil || !created || rev == 0 {
			t.Fatalf("add %+v: %v %v %v", p, rev, created, err)
		}
		if p.JobID == a && p.Rev == 3 {
			revA3 = rev
		}
	}
	next := time.Now().Add(time.Hour).UTC().Truncate(time.Millisecond)
	if _, err := b.Store.UpdatePendingDelivery(ctx, broker.PendingDelivery{JobID: a, Rev: 3, Attempts: 2, NextAt: next, Body: body, Revision: revA3}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Store.UpdatePendingDelivery(ctx, broker.PendingDelivery{JobID: a, Rev: 3, Attempts: 9, Body: body, Revision: revA3}); !errors.Is(err, broker.ErrConflict) {
		t.Fatalf("update at a revision written since: %v, want a conflict", err)
	}
	if _, created, err := b.Store.AddPendingDelivery(ctx, broker.PendingDelivery{JobID: a, Rev: 3, Body: body}); err != nil || created {
		t.Fatalf("second add: created %v, %v", created, err)
	}
	b.Restart(t)
	list, err := b.Store.PendingDeliveries(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 3 || list[0].JobID != a || list[0].Rev != 3 || list[1].Rev != 12 || list[2].JobID != z {
		t.Fatalf("listed %+v", list)
	}
	if list[0].Attempts != 2 || !list[0].NextAt.Equal(next) || string(list[0].Body) != string(body) {
		t.Fatalf("progress lost: %+v", list[0])
	}
	if err := b.Store.FinishPendingDelivery(ctx, a, 3); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Store.PendingDelivery(ctx, a, 3); !errors.Is(err, broker.ErrNotFound) {
		t.Fatalf("finished delivery read: %v", err)
	}
	if list, _ = b.Store.PendingDeliveries(ctx); len(list) != 2 {
		t.Fatalf("after finish: %+v", list)
	}
	// Finishing removes the key from the bucket's stream, body and all: no delete marker
	// stays for every later start to list and read (ADR-0052).
	if h, err := b.JobRecords(t).History(ctx, "whq."+a+".3"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("a finished delivery leaves %d entries in the bucket (%v)", len(h), err)
	}
}

// TestDeliveryLogBoundedInBytes: attempts whose URL and error are long (each "<" is six
// bytes in JSON) fill the log past NATS's maximum message size long before its 200
// entries; the oldest go first, so every attempt is still recorded, the newest last.
func TestDeliveryLogBoundedInBytes(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	id := broker.NewID()
	long := "http://hooks.example/h?" + strings.Repeat("<", 2048-len("http://hooks.example/h?"))
	const n = 100
	for i := 1; i <= n; i++ {
		a := broker.DeliveryAttempt{WebhookID: id + "-1", State: broker.StateDone, Attempt: i, URL: long,
			Error: `Post "` + long + `": context deadline exceeded`, Outcome: broker.OutcomeRetry, Manual: true, At: time.Now().UTC()}
		if err := b.Store.LogDelivery(ctx, id, a); err != nil {
			t.Fatalf("attempt %d not recorded: %v", i, err)
		}
	}
	log, err := b.Store.Deliveries(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if len(log) < 10 || len(log) == n {
		t.Fatalf("log keeps %d entries, want the newest ones, at least 10", len(log))
	}
	for i, a := range log {
		if want := n - len(log) + 1 + i; a.Attempt != want {
			t.Fatalf("entry %d is attempt %d, want %d: the newest attempts, in order", i, a.Attempt, want)
		}
	}
	e, err := b.JobRecords(t).Get(ctx, "dlv."+id)
	if err != nil {
		t.Fatal(err)
	}
	if size := len(e.Value()); size > broker.MaxDeliveryLogBytes {
		t.Fatalf("log is %d bytes, above its bound of %d", size, broker.MaxDeliveryLogBytes)
	}
}

// A pending delivery with no owner (stored by a foreman from before owners were) is
// adopted by a dispatcher's start, not by its periodic claims: such a foreman, still
// running, clears the owner at each retry, and both would send it again and again. And
// a progress write needs the revision it read.
func TestClaimPendingDeliveryWithoutOwner(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	id := broker.NewID()
	if _, err := b.JobRecords(t).Put(ctx, "whq."+id+".7", []byte(`{"job_id":"`+id+`","rev":7,"attempts":1,"body":{"state":"done"}}`)); err != nil {
		t.Fatal(err)
	}
	periodic, failed, err := b.Store.ClaimPendingDeliveries(ctx, func(string, uint64) bool { return false })
	if err != nil || len(periodic) != 0 || len(failed) != 0 {
		t.Fatalf("periodic claim: %+v (failed %+v) %v, want none", periodic, failed, err)
	}
	start, failed, err := b.Store.ClaimPendingDeliveries(ctx, nil)
	if err != nil || len(failed) != 0 || len(start) != 1 || start[0].Owner != b.Store.BootID() || start[0].Attempts != 1 {
		t.Fatalf("start's claim: %+v %v, want the entry adopted", start, err)
	}
	p := start[0]
	p.Revision = 0
	if _, err := b.Store.UpdatePendingDelivery(ctx, p); !errors.Is(err, broker.ErrConflict) {
		t.Fatalf("update at no revision: %v, want a conflict", err)
	}
}

// A job's delivery log keeps one message in the bucket's stream however often it is
// written: each write holds the whole log, and the 16 revisions the bucket keeps of a
// key made a job whose webhook was retried hold 16 copies of its log on disk for the job
// TTL (4 MiB for a log of 256 KiB). Writers that race still each add their attempt.
func TestDeliveryLogKeepsOneCopy(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	id := broker.NewID()
	url := "http://hooks.example/h?" + strings.Repeat("x", 1000)
	const writers, each = 2, 15
	errs := make(chan error, writers)
	for w := range writers {
		go func() {
			var err error
			for i := 1; i <= each && err == nil; i++ {
				err = b.Store.LogDelivery(ctx, id, broker.DeliveryAttempt{WebhookID: id + "-1", State: broker.StateQueued,
					Attempt: w*each + i, URL: url, Error: "500 Internal Server Error", Outcome: broker.OutcomeRetry, At: time.Now().UTC()})
			}
			errs <- err
		}()
	}
	for range writers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	log, err := b.Store.Deliveries(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for _, a := range log {
		seen[a.Attempt] = true
	}
	if len(log) != writers*each || len(seen) != writers*each {
		t.Fatalf("log holds %d attempts (%d distinct), want %d: a racing write lost one", len(log), len(seen), writers*each)
	}
	if n := keyMessages(t, b, "dlv."+id); n != 1 {
		t.Fatalf("the jobs stream holds %d messages of the delivery log, want 1 (the latest)", n)
	}
}

// keyMessages is how many messages of key the jobs bucket's stream holds.
func keyMessages(t *testing.T, b *brokertest.Bundle, key string) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	subject := "$KV." + broker.JobsBucket + "." + key
	st, err := b.JetStream(t).Stream(ctx, "KV_"+broker.JobsBucket)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(subject))
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Subjects[subject]
}

// A pending delivery's progress, written at each attempt with the whole event (its
// result up to 64 KiB), keeps one message in the bucket's stream through its retries, not
// one per attempt; a write at a revision written since is still a conflict.
func TestPendingDeliveryKeepsOneCopy(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	id := broker.NewID()
	body := []byte(`{"job_id":"` + id + `","state":"done","result":"` + strings.Repeat("r", 32<<10) + `"}`)
	rev, created, err := b.Store.AddPendingDelivery(ctx, broker.PendingDelivery{JobID: id, Rev: 7, Body: body})
	if err != nil || !created {
		t.Fatalf("add: %v %v", created, err)
	}
	first := rev
	for i := 1; i <= 10; i++ {
		if rev, err = b.Store.UpdatePendingDelivery(ctx, broker.PendingDelivery{JobID: id, Rev: 7, Attempts: i, Body: body, Revision: rev}); err != nil {
			t.Fatalf("attempt %d: %v", i, err)
		}
	}
	if _, err := b.Store.UpdatePendingDelivery(ctx, broker.PendingDelivery{JobID: id, Rev: 7, Attempts: 99, Body: body, Revision: first}); !errors.Is(err, broker.ErrConflict) {
		t.Fatalf("update at a revision written since: %v, want a conflict", err)
	}
	p, err := b.Store.PendingDelivery(ctx, id, 7)
	if err != nil || p.Attempts != 10 || p.Revision != rev || string(p.Body) != string(body) {
		t.Fatalf("read back %+v, %v; want attempt 10 at revision %d", p, err, rev)
	}
	if n := keyMessages(t, b, "whq."+id+".7"); n != 1 {
		t.Fatalf("the jobs stream holds %d messages of the pending delivery, want 1 (the latest)", n)
	}
}
