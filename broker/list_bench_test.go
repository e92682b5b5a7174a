package broker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// fillRecords writes n job records straight into the bucket, as a busy foreman
// leaves them: created in id order, each updated to its end a few jobs later (two
// revisions per job, interleaved), models and end states mixed. It returns the ids in
// creation order.
func fillRecords(tb testing.TB, bundle *brokertest.Bundle, n int) []string {
	tb.Helper()
	js := bundle.JetStream(tb)
	ids := make([]string, n)
	now := time.Now().UTC()
	put := func(i int, state broker.State) {
		j := broker.Job{ID: ids[i], Model: fmt.Sprintf("bench-%d:latest", i%5), Kind: broker.KindChat, State: state, CreatedAt: now, At: now}
		data, _ := json.Marshal(&j)
		if _, err := js.PublishAsync("$KV."+broker.JobsBucket+".job."+ids[i], data); err != nil {
			tb.Fatal(err)
		}
	}
	for i := range n {
		ids[i] = broker.NewID()
		put(i, broker.StateQueued)
		if i >= 3 {
			end := broker.StateDone
			if (i-3)%10 == 0 {
				end = broker.StateFailed
			}
			put(i-3, end)
		}
		// A few writes in flight at a time: pipelined, yet each record is stored a moment
		// after its id was made, as a synchronous submit stores it.
		if i%50 == 49 {
			<-js.PublishAsyncComplete()
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(5 * time.Minute):
		tb.Fatal("record publish timed out")
	}
	return ids
}

// BenchmarkList measures GET /jobs pages: the newest page, a page in the middle (by
// cursor) and filtered pages, over growing numbers of records. Above 1k records the
// set-up takes a while; -short skips it.
func BenchmarkList(b *testing.B) {
	for _, n := range []int{1_000, 100_000} {
		if n > 1_000 && testing.Short() {
			continue
		}
		bundle := brokertest.New(b)
		ids := fillRecords(b, bundle, n)
		ctx := context.Background()
		cases := []struct {
			name string
			opt  broker.ListOptions
		}{
			{"newest3", broker.ListOptions{Limit: 3}},
			{"newest50", broker.ListOptions{Limit: 50}},
			{"middle50", broker.ListOptions{Limit: 50, Cursor: ids[n/2]}},
			{"failed50", broker.ListOptions{Limit: 50, States: []broker.State{broker.StateFailed}}},
			{"model50", broker.ListOptions{Limit: 50, Model: "bench-3"}},
		}
		for _, c := range cases {
			b.Run(c.name+"/records="+strconv.Itoa(n), func(b *testing.B) {
				for b.Loop() {
					page, _, err := bundle.Store.List(ctx, c.opt)
					if err != nil || len(page) != c.opt.Limit {
						b.Fatalf("list: %d jobs, %v", len(page), err)
					}
				}
			})
		}
		bundle.Stop()
	}
}

// BenchmarkListFinishedBehindQueue is the status page's read of the newest finished jobs
// (state=done,failed,canceled, 15 of them) with 50k waiting jobs newer than 10k finished
// ones. The waiting jobs' records are written as Submit writes them, with their state in
// a header, which the listing's scan reads: "unmarked" writes them without it (records of
// a foreman from before), which makes the filter read the record of every waiting job
// first. -short skips it.
func BenchmarkListFinishedBehindQueue(b *testing.B) {
	if testing.Short() {
		b.Skip("a 60k-record set-up")
	}
	for _, marked := range []bool{true, false} {
		name := "marked"
		if !marked {
			name = "unmarked"
		}
		b.Run(name, func(b *testing.B) { benchFinishedBehindQueue(b, marked) })
	}
}

func benchFinishedBehindQueue(b *testing.B, marked bool) {
	bundle := brokertest.New(b)
	js := bundle.JetStream(b)
	now := time.Now().UTC()
	put := func(id string, state broker.State) {
		j := broker.Job{ID: id, Model: "m:latest", Kind: broker.KindChat, State: state, CreatedAt: now, At: now}
		data, _ := json.Marshal(&j)
		msg := nats.NewMsg("$KV." + broker.JobsBucket + ".job." + id)
		msg.Data = data
		if marked && state == broker.StateQueued { // a finished job's last write is an update
			msg.Header.Set(broker.HeaderRecordState, string(state))
		}
		if _, err := js.PublishMsgAsync(msg); err != nil {
			b.Fatal(err)
		}
	}
	for i := range 60_000 {
		st := broker.StateDone
		if i >= 10_000 {
			st = broker.StateQueued
		}
		put(broker.NewID(), st)
		if i%500 == 499 {
			<-js.PublishAsyncComplete()
		}
	}
	<-js.PublishAsyncComplete()
	ctx := context.Background()
	opt := broker.ListOptions{Limit: 15, States: []broker.State{broker.StateDone, broker.StateFailed, broker.StateCanceled}}
	for b.Loop() {
		page, _, err := bundle.Store.List(ctx, opt)
		if err != nil || len(page) != 15 {
			b.Fatalf("list: %d jobs, %v", len(page), err)
		}
	}
}
