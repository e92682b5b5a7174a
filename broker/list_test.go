package broker_test

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/oklog/ulid/v2"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// listAll pages through List with opt until the last page, calling between after each
// page, and returns the ids in the order listed.
func listAll(t *testing.T, st *broker.Store, opt broker.ListOptions, between func(page int)) []string {
	t.Helper()
	var got []string
	for page := 0; ; page++ {
		jobs, next, err := st.List(ctxT(t), opt)
		if err != nil {
			t.Fatalf("page %d: %v", page, err)
		}
		if len(jobs) > opt.Limit || (next != "" && len(jobs) != opt.Limit) {
			t.Fatalf("page %d: %d jobs with next %q (limit %d)", page, len(jobs), next, opt.Limit)
		}
		for _, j := range jobs {
			got = append(got, j.ID)
		}
		if next == "" {
			return got
		}
		if between != nil {
			between(page)
		}
		opt.Cursor = next
	}
}

// expire removes every revision of a record from the bucket's stream, as MaxAge does: no
// delete marker is left behind (a stream purge by subject, not the bucket's Purge).
func expire(t *testing.T, b *brokertest.Bundle, id string) {
	t.Helper()
	ctx := ctxT(t)
	stream, err := b.JetStream(t).Stream(ctx, "KV_"+broker.JobsBucket)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Purge(ctx, jetstream.WithPurgeSubject("$KV."+broker.JobsBucket+".job."+id)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Store.Get(ctx, id); !errors.Is(err, broker.ErrNotFound) {
		t.Fatalf("expired record: %v", err)
	}
}

// Paging newest first over many records yields every record exactly once, in id order,
// with and without filters, although old records keep getting new revisions and other
// keys share the bucket.
func TestListPagesEveryRecordOnce(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	// Each write of the set-up has a deadline of its own (ctxT), as each page of the
	// listing has: 300 submits and 100 rewrites under one 30 s deadline failed once under
	// CPU stress, on the set-up's speed, not on anything the listing does.
	const n = 300
	jobs := make([]*broker.Job, n)
	for i := range n {
		jobs[i] = submit(t, b.Store, fmt.Sprintf("m%d", i%3), `{}`)
		if i%4 == 0 && i >= 8 { // an older job moves on while newer ones arrive
			if _, _, err := b.Store.Modify(ctxT(t), jobs[i-8].ID, func(j *broker.Job) error { j.State = broker.StateWorking; return nil }); err != nil {
				t.Fatal(err)
			}
		}
		if i%10 == 0 {
			if _, _, err := b.Store.ClaimIdempotencyKey(ctxT(t), fmt.Sprint("k", i), broker.IdempotencyClaim{JobID: jobs[i].ID}); err != nil {
				t.Fatal(err)
			}
		}
	}
	// A job written more often than the bucket keeps revisions: its first ones are gone.
	for k := range 20 {
		if _, _, err := b.Store.Modify(ctxT(t), jobs[50].ID, func(j *broker.Job) error { j.Error = fmt.Sprint("note ", k); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	// The oldest jobs end last: their latest revisions are the newest in the stream.
	for _, j := range jobs[:20] {
		if _, _, err := b.Store.Modify(ctxT(t), j.ID, func(j *broker.Job) error { j.State = broker.StateFailed; return nil }); err != nil {
			t.Fatal(err)
		}
	}
	want := func(keep func(i int) bool) []string {
		var ids []string
		for i := n - 1; i >= 0; i-- {
			if keep(i) {
				ids = append(ids, jobs[i].ID)
			}
		}
		return ids
	}
	failed := func(i int) bool { return i < 20 }
	cases := []struct {
		name string
		opt  broker.ListOptions
		want []string
	}{
		{"all", broker.ListOptions{Limit: 7}, want(func(int) bool { return true })},
		{"one page", broker.ListOptions{Limit: 1000}, want(func(int) bool { return true })},
		{"model", broker.ListOptions{Limit: 9, Model: "m1"}, want(func(i int) bool { return i%3 == 1 })},
		{"state", broker.ListOptions{Limit: 4, States: []broker.State{broker.StateFailed}}, want(failed)},
		{"working", broker.ListOptions{Limit: 10, States: []broker.State{broker.StateWorking}}, want(func(i int) bool {
			return !failed(i) && i%4 == 0 && i+8 < n && i+8 >= 8
		})},
		{"model and state", broker.ListOptions{Limit: 2, Model: "m2", States: []broker.State{broker.StateFailed}}, want(func(i int) bool { return failed(i) && i%3 == 2 })},
		{"states", broker.ListOptions{Limit: 8, States: []broker.State{broker.StateFailed, broker.StateWorking}}, want(func(i int) bool {
			return failed(i) || (i%4 == 0 && i+8 < n)
		})},
	}
	for mode, set := range broker.ListModes {
		set(b.Store)
		for _, c := range cases {
			got := listAll(t, b.Store, c.opt, nil)
			if !slices.Equal(got, c.want) {
				t.Errorf("%s, %s: listed %d jobs, want %d\n got %v\nwant %v", mode, c.name, len(got), len(c.want), got, c.want)
			}
		}
	}
}

// Records that expire, are deleted or change while a client pages are never listed twice
// nor out of order, and every record that stays is listed.
func TestListPagingWhileRecordsGoAndChange(t *testing.T) {
	t.Parallel()
	for mode, set := range broker.ListModes {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			b := brokertest.New(t)
			set(b.Store)
			pagingWhileRecordsGoAndChange(t, b)
		})
	}
}

func pagingWhileRecordsGoAndChange(t *testing.T, b *brokertest.Bundle) {
	ctx := ctxT(t)
	const n = 120
	ids := make([]string, n)
	for i := range n {
		ids[i] = submit(t, b.Store, "m", `{}`).ID
	}
	gone := map[string]bool{}
	between := func(page int) {
		switch page {
		case 0: // ahead of the cursor: two expire, two are purged, one gets a new revision
			for _, i := range []int{100, 60} {
				expire(t, b, ids[i])
				gone[ids[i]] = true
			}
			for _, i := range []int{90, 5} {
				if err := b.JobRecords(t).Purge(ctx, "job."+ids[i]); err != nil {
					t.Fatal(err)
				}
				gone[ids[i]] = true
			}
			if _, _, err := b.Store.Modify(ctx, ids[30], func(j *broker.Job) error { j.State = broker.StateWorking; return nil }); err != nil {
				t.Fatal(err)
			}
		case 1: // already listed: the newest goes, and new jobs arrive
			expire(t, b, ids[n-1])
			for range 3 {
				submit(t, b.Store, "m", `{}`)
			}
		}
	}
	got := listAll(t, b.Store, broker.ListOptions{Limit: 8}, between)
	var want []string
	for i := n - 1; i >= 0; i-- {
		if !gone[ids[i]] {
			want = append(want, ids[i])
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("listed %d jobs, want %d\n got %v\nwant %v", len(got), len(want), got, want)
	}
}

// An empty bucket lists nothing, and a bucket whose only keys are not jobs too.
func TestListEmpty(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := context.Background()
	jobs, next, err := b.Store.List(ctx, broker.ListOptions{})
	if err != nil || len(jobs) != 0 || next != "" {
		t.Fatalf("empty: %v %q %v", jobs, next, err)
	}
	if _, _, err := b.Store.ClaimIdempotencyKey(ctx, "k", broker.IdempotencyClaim{JobID: broker.NewID()}); err != nil {
		t.Fatal(err)
	}
	jobs, next, err = b.Store.List(ctx, broker.ListOptions{})
	if err != nil || len(jobs) != 0 || next != "" {
		t.Fatalf("only an idempotency key: %v %q %v", jobs, next, err)
	}
}

// A job whose id was made by a clock ahead of the NATS server's (a foreman on another
// host, its clock some seconds fast) is still listed: the newest page reaches it although
// many writes came after it.
func TestListFindsJobOfAClockAhead(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	now := time.Now()
	idAt := func(d time.Duration) string { return ulid.MustNew(ulid.Timestamp(now.Add(d)), rand.Reader).String() }
	ahead := idAt(10 * time.Second)
	if _, err := b.Store.Submit(ctxT(t), &broker.Job{ID: ahead, Model: "m", Kind: broker.KindChat}, []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	// More jobs than the first window read back, from the same clock (a little less ahead
	// by now, or another fast clock): their ids are newer than the messages around them.
	for i := range 300 {
		if _, err := b.Store.Submit(ctxT(t), &broker.Job{ID: idAt(2*time.Second + time.Duration(i)*time.Millisecond), Model: "m", Kind: broker.KindChat}, []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
	}
	jobs, _, err := b.Store.List(ctxT(t), broker.ListOptions{Limit: 5})
	if err != nil {
		t.Fatal(err)
	}
	if len(jobs) == 0 || jobs[0].ID != ahead {
		t.Fatalf("newest page does not start with the job of the clock ahead (%d jobs)", len(jobs))
	}
}

// Job ids are made on the NATS server's clock, whatever the host's: of two foremen
// sharing one NATS, their hosts' clocks ahead of the server's by two minutes and by one
// (past the paging's slack), every job is listed. With ids on the host's clock, the first
// foreman's job ranked above every other (its id two minutes ahead) but was met only
// past the first window read back, by when the page was full of the second's jobs, and
// the next page starts below them: no page listed it.
func TestListFindsJobsOfHostClocksMinutesAhead(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	open := func(ahead time.Duration) *broker.Store {
		st, err := broker.Open(ctx, broker.Config{Conn: b.Conn, Now: func() time.Time { return time.Now().Add(ahead) }})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	fast, faster := open(time.Minute), open(2*time.Minute)
	first, err := faster.Submit(ctx, &broker.Job{ID: faster.NewID(), Model: "m", Kind: broker.KindChat}, []byte(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{first.ID}
	for range 300 {
		j, err := fast.Submit(ctx, &broker.Job{ID: fast.NewID(), Model: "m", Kind: broker.KindChat}, []byte(`{}`))
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, j.ID)
	}
	got := listAll(t, b.Store, broker.ListOptions{Limit: 50}, nil)
	if !slices.Contains(got, first.ID) || len(got) != len(want) {
		t.Fatalf("listed %d of %d jobs; the first foreman's %s listed: %v", len(got), len(want), first.ID, slices.Contains(got, first.ID))
	}
	slices.Sort(want)
	slices.Reverse(want)
	if !slices.Equal(got, want) {
		t.Fatal("jobs not listed newest first")
	}
}

// A listing reads the records' keys through a consumer of its own, which the NATS
// server's cap on a stream's consumers (1,000 by default) may refuse while as many
// listings run at once: that is the store being busy (a 503 that invites a retry), not
// an internal error.
func TestListAtTheServersConsumerLimit(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	submit(t, b.Store, "m", `{"model":"m"}`)
	js := b.JetStream(t)
	for i := 0; ; i++ {
		_, err := js.CreateConsumer(ctx, "KV_"+broker.JobsBucket, jetstream.ConsumerConfig{
			Name: fmt.Sprintf("listing-%d", i), AckPolicy: jetstream.AckNonePolicy, MemoryStorage: true,
			InactiveThreshold: time.Hour,
		})
		if errors.Is(err, jetstream.ErrMaximumConsumersLimit) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if i == 5000 {
			t.Fatal("the server took 5,000 consumers: no limit, the test shows nothing")
		}
	}
	if _, _, err := b.Store.List(ctx, broker.ListOptions{}); !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("list at the consumer limit: %v, want ErrUnavailable", err)
	}
}

// A listing's consumer lives on one node of a cluster, and the interest in its pulls
// reaches the node the listing's connection is on a moment later: a pull sent in that
// moment reaches no one ("no responders", nothing delivered). It is asked again, not
// answered as the cluster unavailable (a cluster soak saw 5 of 315 `GET /jobs` answered
// 503 so, no node down). Here the consumer is gone for the first pull and back, the same,
// for the next.
func TestListAsksAgainAPullThatReachedNoOne(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	id := submit(t, b.Store, "m", `{"model":"m"}`).ID
	broker.ListModes["by scan"](b.Store)
	js := b.JetStream(t)
	var (
		pulls int
		gone  jetstream.ConsumerConfig
	)
	b.Store.SetListFetch(func(name string) {
		pulls++
		switch pulls {
		case 1:
			c, err := js.Consumer(ctx, "KV_"+broker.JobsBucket, name)
			if err != nil {
				t.Error(err)
				return
			}
			gone = c.CachedInfo().Config
			if err := js.DeleteConsumer(ctx, "KV_"+broker.JobsBucket, name); err != nil {
				t.Error(err)
			}
		case 2:
			if _, err := js.CreateConsumer(ctx, "KV_"+broker.JobsBucket, gone); err != nil {
				t.Error(err)
			}
		}
	})
	jobs, _, err := b.Store.List(ctx, broker.ListOptions{})
	if err != nil {
		t.Fatalf("list: %v, want the pull asked again", err)
	}
	if len(jobs) != 1 || jobs[0].ID != id || pulls < 2 {
		t.Fatalf("listed %d jobs after %d pulls, want job %s after a second pull", len(jobs), pulls, id)
	}
}

// A listing whose consumer delivers nothing for a while though messages are pending (a
// server slow to deliver: busy, its disk slow; here the consumer paused) waits for them,
// rather than ending its read of the stream there and leaving the jobs only those
// messages name off the page with nothing to say so; past the retry window it fails as
// unavailable.
func TestListWaitsForMessagesPendingOnASlowServer(t *testing.T) {
	t.Parallel()
	const window = 3 * time.Second
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) { c.RetryWindow = window }))
	ctx := ctxT(t)
	var want []string
	for range 3 {
		want = append([]string{submit(t, b.Store, "m", `{"model":"m"}`).ID}, want...)
	}
	broker.ListModes["by scan"](b.Store)
	js := b.JetStream(t)
	var pulls, resumeAt int
	b.Store.SetListFetch(func(name string) {
		pulls++
		switch pulls {
		case 1:
			if _, err := js.PauseConsumer(ctx, "KV_"+broker.JobsBucket, name, time.Now().Add(time.Hour)); err != nil {
				t.Error(err)
			}
		case resumeAt:
			if _, err := js.ResumeConsumer(ctx, "KV_"+broker.JobsBucket, name); err != nil {
				t.Error(err)
			}
		}
	})
	resumeAt = 3 // after a pull that waited
	jobs, _, err := b.Store.List(ctx, broker.ListOptions{})
	var got []string
	for _, j := range jobs {
		got = append(got, j.ID)
	}
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("list: %v (%v) after %d pulls, want %v", got, err, pulls, want)
	}

	pulls, resumeAt = 0, -1 // paused for good
	lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, _, err = b.Store.List(lctx, broker.ListOptions{})
	if !errors.Is(err, broker.ErrUnavailable) || lctx.Err() != nil {
		t.Fatalf("list whose consumer never delivers: %v (deadline passed: %v), want unavailable within the %v window", err, lctx.Err() != nil, window)
	}
}

// A listing whose pulls reach no one for longer than the retry window (the consumer
// gone for good) ends with that error, for the caller to answer as unavailable: it does
// not ask on until the caller's deadline.
func TestListGivesUpOnPullsThatReachNoOneAfterTheRetryWindow(t *testing.T) {
	t.Parallel()
	// Well under the caller's 30 s, and long enough for the submit's and the listing's own
	// tries, which the window bounds too, on a loaded machine.
	const window = 2 * time.Second
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) { c.RetryWindow = window }))
	ctx := ctxT(t)
	submit(t, b.Store, "m", `{"model":"m"}`)
	broker.ListModes["by scan"](b.Store)
	js := b.JetStream(t)
	pulls := 0
	b.Store.SetListFetch(func(name string) {
		pulls++
		if pulls == 1 {
			if err := js.DeleteConsumer(ctx, "KV_"+broker.JobsBucket, name); err != nil {
				t.Error(err)
			}
		}
	})
	lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, _, err := b.Store.List(lctx, broker.ListOptions{})
	if !errors.Is(err, nats.ErrNoResponders) || lctx.Err() != nil || pulls < 2 {
		t.Fatalf("list whose consumer is gone: %v after %d pulls (deadline passed: %v), want no responders within the %v window",
			err, pulls, lctx.Err() != nil, window)
	}
}

// On a cluster of three (replicated buckets, records read in batches from any replica)
// a filtered listing pages through every matching job once, newest first, a canceled one
// left out: a filter that most jobs miss reads their records in batches.
func TestListFilteredOnACluster(t *testing.T) {
	t.Parallel()
	c := brokertest.NewCluster(t, 3)
	st := c.Open(t, nil)
	ctx := ctxT(t)
	var want []string
	for i := range 40 {
		j := submit(t, st, "m", `{}`)
		switch {
		case i == 9:
			if _, err := st.Cancel(ctx, j.ID, "gone"); err != nil {
				t.Fatal(err)
			}
		case i%3 == 0:
			if _, _, err := st.Modify(ctx, j.ID, func(j *broker.Job) error { j.State = broker.StateWorking; return nil }); err != nil {
				t.Fatal(err)
			}
			want = append([]string{j.ID}, want...)
		}
	}
	got := listAll(t, st, broker.ListOptions{Limit: 4, States: []broker.State{broker.StateWorking}}, nil)
	if !slices.Equal(got, want) {
		t.Fatalf("listed %v\nwant %v", got, want)
	}
}

// The finished jobs behind a deep queue (the status page's list) are found without
// reading the record of each waiting job newer than them: a submit's record says its
// state in its headers, which the listing's scan reads anyway. Nor does the listing turn
// to reading every key (and so every waiting job's record) for the length of the stream
// it reads back past them. A job whose latest revision does not say its state (here one
// that retried) is read as before, and a listing of the waiting jobs still lists them.
func TestListFinishedSkipsWaitingJobsUnread(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	var finished []string
	for range 3 {
		j := submit(t, b.Store, "m", `{}`)
		if _, err := b.Store.Cancel(ctx, j.ID, "done with"); err != nil {
			t.Fatal(err)
		}
		finished = append([]string{j.ID}, finished...)
	}
	// A deep queue: records as Submit writes them (published at once, for speed), then
	// jobs submitted.
	js := b.JetStream(t)
	const published, submitted = 900, 150
	for range published {
		now := time.Now().UTC()
		j := broker.Job{ID: broker.NewID(), Model: "m:latest", Kind: broker.KindChat, State: broker.StateQueued, CreatedAt: now, At: now}
		msg := nats.NewMsg("$KV." + broker.JobsBucket + ".job." + j.ID)
		msg.Header.Set(broker.HeaderRecordState, string(j.State))
		msg.Data, _ = json.Marshal(&j)
		if _, err := js.PublishMsgAsync(msg); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
		t.Fatal("records not stored")
	}
	var queued []string
	for i := range submitted {
		j := submit(t, b.Store, "m", `{}`)
		if i == 7 {
			if _, _, err := b.Store.Modify(ctx, j.ID, func(j *broker.Job) error { j.State = broker.StateRetrying; return nil }); err != nil {
				t.Fatal(err)
			}
			continue
		}
		queued = append([]string{j.ID}, queued...)
	}
	if _, err := b.Store.Resubmit(ctx, queued[0], asSent([]byte(`{}`))); err != nil { // its rewrite says the state again
		t.Fatal(err)
	}
	var reads atomic.Int64
	b.Store.SetRecordsRead(func(n int) { reads.Add(int64(n)) })
	got := listAll(t, b.Store, broker.ListOptions{Limit: 10, States: []broker.State{broker.StateDone, broker.StateFailed, broker.StateCanceled}}, nil)
	if !slices.Equal(got, finished) {
		t.Fatalf("finished: %v, want %v", got, finished)
	}
	if n := reads.Load(); n != 4 {
		t.Fatalf("the finished jobs' listing read %d records, want 4 (3 finished, 1 retrying; not the %d waiting)", n, published+submitted-1)
	}
	page, _, err := b.Store.List(ctx, broker.ListOptions{Limit: 50, States: []broker.State{broker.StateQueued}})
	var listed []string
	for _, j := range page {
		listed = append(listed, j.ID)
	}
	if err != nil || !slices.Equal(listed, queued[:50]) {
		t.Fatalf("queued: %v (%v), want %v", listed, err, queued[:50])
	}
}
