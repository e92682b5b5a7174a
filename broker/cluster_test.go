package broker_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// A write that meets the election after the job bucket's leader died is retried until
// the new leader takes it, instead of failing.
func TestClusterWriteThroughLeaderKill(t *testing.T) {
	if testing.Short() {
		t.Skip("3-node cluster; skipped with -short")
	}
	t.Parallel()
	c := brokertest.NewCluster(t, 3)
	st := c.Open(t, func(cfg *broker.Config) { cfg.RetryWindow = electionWindow })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	j := submitReadable(t, ctx, st)
	c.Kill(c.StreamLeader("KV_" + broker.JobsBucket))
	ctx = afterKill(t)
	if _, _, err := st.Modify(ctx, j.ID, func(j *broker.Job) error { j.State = broker.StateCanceled; return nil }); err != nil {
		t.Fatalf("write after the leader died: %v", err)
	}
	// A replica's direct read may lag the write for a moment.
	eventually(t, time.Minute, "the write read back as canceled", func() bool {
		got, _, err := st.Get(ctx, j.ID)
		return err == nil && got.State == broker.StateCanceled
	})
}

// electionWindow is the retry window of a store whose writes must get through the
// elections that follow a node's kill: the two nodes left elect a new leader for each
// stream and consumer the dead one led, and under -race on a loaded 2-core machine that
// has taken most of a minute (CI). A store that does not retry fails at once, however
// long the window.
const electionWindow = 2 * time.Minute

// afterKill is the context of what a test does once it killed a node: it starts then,
// so the cluster's forming and the test's set-up take none of the recovery's time, and
// outlasts electionWindow.
func afterKill(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), electionWindow+time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// With no quorum left, reads give up after the retry window with ErrUnavailable (the
// gateway's 503), not a raw NATS error.
func TestClusterReadUnavailable(t *testing.T) {
	if testing.Short() {
		t.Skip("3-node cluster; skipped with -short")
	}
	t.Parallel()
	c := brokertest.NewCluster(t, 3)
	st := c.Open(t, func(cfg *broker.Config) { cfg.RetryWindow = 2 * time.Second })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	j, err := st.Submit(ctx, &broker.Job{Model: "tiny-a", Kind: broker.KindChat}, []byte(`{"model":"tiny-a"}`))
	if err != nil {
		t.Fatal(err)
	}
	c.Kill(0)
	c.Kill(1)
	_, _, err = st.Modify(ctx, j.ID, func(j *broker.Job) error { j.State = broker.StateCanceled; return nil })
	if !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("write without quorum: %v, want ErrUnavailable", err)
	}
}

// On a replicated bucket, writes that keep a job's state (a cancel request on a running
// job, an artifact) race as any others: the server answers a loser "wrong last sequence"
// in either of its two codes, and each is a conflict that Modify re-reads and applies
// again (or, having lost every time, an ErrConflict: a 409), never a raw error (a DELETE
// of a running job answered 500 so).
func TestClusterConcurrentSameStateWrites(t *testing.T) {
	if testing.Short() {
		t.Skip("3-node cluster; skipped with -short")
	}
	t.Parallel()
	c := brokertest.NewCluster(t, 3)
	st := c.Open(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	j := submitReadable(t, ctx, st)
	if _, _, err := st.Modify(ctx, j.ID, func(j *broker.Job) error { j.State = broker.StateWorking; return nil }); err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 40)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 10 {
				_, _, err := st.Modify(ctx, j.ID, func(j *broker.Job) error {
					j.CancelRequested = fmt.Sprintf("writer %d, round %d", w, i)
					return nil
				})
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	won := 0
	for err := range errs {
		switch {
		case err == nil:
			won++
		case errors.Is(err, broker.ErrConflict): // lost every re-read to the others: a 409
		default:
			t.Fatalf("same-state write: %v", err)
		}
	}
	if won == 0 {
		t.Fatal("no same-state write was stored")
	}
}

// submitReadable submits a job on a cluster's store and reads it back at once: a replica
// that has not applied the create yet answers a direct read "not found", and the store
// then asks the stream's leader, so the read finds the job.
func submitReadable(t *testing.T, ctx context.Context, st *broker.Store) *broker.Job {
	t.Helper()
	j, err := st.Submit(ctx, &broker.Job{Model: "tiny-a", Kind: broker.KindChat}, []byte(`{"model":"tiny-a"}`))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.Get(ctx, j.ID); err != nil {
		t.Fatalf("read right after the submit: %v", err)
	}
	return j
}

// A replica that lags the job bucket's leader answers direct reads "not found" for a
// job that exists (here a responder that always says so stands for it, answering half
// the reads, the servers the other half). Every read and write of the job still finds it: a 404
// would tell a caller its submitted job does not exist, a cancel that it cannot be
// cancelled, an Idempotency-Key that it was never used.
func TestClusterReadPastALaggingReplica(t *testing.T) {
	c, st, ctx, j := clusterJob(t)
	lagging := lagDirectReads(t, c)
	// The leader's reads, counted as they go by: the store must have asked it.
	leaderReads, err := lagging.SubscribeSync("$JS.API.STREAM.MSG.GET.KV_" + broker.JobsBucket)
	if err != nil {
		t.Fatal(err)
	}
	if err := lagging.Flush(); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		if _, _, err := st.Get(ctx, j.ID); err != nil {
			t.Fatalf("read %d: %v", i, err)
		}
		if _, _, err := st.GetRaw(ctx, j.ID); err != nil {
			t.Fatalf("raw read %d: %v", i, err)
		}
	}
	if _, _, err := st.Modify(ctx, j.ID, func(j *broker.Job) error { j.State = broker.StateCanceled; return nil }); err != nil {
		t.Fatalf("write: %v", err)
	}
	if _, _, err := st.Get(ctx, "01ARZ3NDEKTSV4RRFFQ69G5FAV"); !errors.Is(err, broker.ErrNotFound) {
		t.Fatalf("read of a job that never was: %v, want ErrNotFound", err)
	}
	// A purged record (a discarded job) is not found either, not a storage error.
	gone, err := st.Submit(ctx, &broker.Job{Model: "tiny-a", Kind: broker.KindChat}, []byte(`{"model":"tiny-a"}`))
	if err != nil {
		t.Fatal(err)
	}
	if err := brokertest.JobRecords(t, lagging).Purge(ctx, "job."+gone.ID); err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.Get(ctx, gone.ID); !errors.Is(err, broker.ErrNotFound) {
		t.Fatalf("read of a purged job: %v, want ErrNotFound", err)
	}
	askedLeader(t, leaderReads)
}

// A read of a record as stored (GetRaw: the webhook dispatcher's manual redelivery reads
// so) goes through a direct get no replica answers ("no responders", as while a stream
// elects a leader) as Get does: tried again within the retry window. Tried once, half the
// reads here failed, and a redelivery asked then was told the job was not found.
func TestClusterGetRawThroughNoResponders(t *testing.T) {
	// Each try of a read has even odds: within the default 5 s window (about nine tries)
	// one read in 500 failed, and one run in 25 of the twenty reads below. Thirty seconds
	// leave about 30 tries to each read; with no retry at all every run fails.
	c, st, ctx, j := clusterJob(t, func(cfg *broker.Config) { cfg.RetryWindow = 30 * time.Second })
	// Half the direct gets go to a subject nobody answers.
	c.MapSubject(t, "$JS.API.DIRECT.GET.KV_"+broker.JobsBucket+".>", "nobody.answers.>", 50)
	for i := range 20 {
		if _, _, err := st.GetRaw(ctx, j.ID); err != nil {
			t.Fatalf("raw read %d: %v", i, err)
		}
	}
}

// A replica behind the presence bucket's leader says "not found" of a foreman that has
// announced itself; its sync callers are not given up for gone on that word (the store
// asks the leader), or another foreman would cancel their jobs while they wait.
func TestClusterPresencePastALaggingReplica(t *testing.T) {
	if testing.Short() {
		t.Skip("3-node cluster; skipped with -short")
	}
	t.Parallel()
	c := brokertest.NewCluster(t, 3)
	caller := c.Open(t, nil)
	other := c.Open(t, nil)
	other.LagPresenceReads()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if other.CallerGone(ctx, &broker.Job{ID: broker.NewID(), Sync: true, Gateway: caller.BootID()}) {
		t.Fatal("the caller of a live foreman taken for gone")
	}
	if !other.CallerGone(ctx, &broker.Job{ID: broker.NewID(), Sync: true, Gateway: broker.NewID()}) {
		t.Fatal("the caller of a foreman that never announced itself taken for present")
	}
}

// The foremen on one NATS each create the buckets with their own FOREMAN_NATS_REPLICAS, so a
// bucket has the replicas of the last one started: a foreman started with 1 before
// others started with 3 reads replicated buckets. It asks their leader too: its own
// setting does not tell it that its reads may lag.
func TestClusterSingleReplicaForemanReadsPastALaggingReplica(t *testing.T) {
	if testing.Short() {
		t.Skip("3-node cluster; skipped with -short")
	}
	t.Parallel()
	c := brokertest.NewCluster(t, 3)
	single := c.Open(t, func(cfg *broker.Config) { cfg.Replicas = 1 })
	caller := c.Open(t, nil) // raises the buckets to 3 replicas
	single.LagPresenceReads()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if single.CallerGone(ctx, &broker.Job{ID: broker.NewID(), Sync: true, Gateway: caller.BootID()}) {
		t.Fatal("a foreman started with one replica took the caller of a live foreman for gone")
	}
	if !single.CallerGone(ctx, &broker.Job{ID: broker.NewID(), Sync: true, Gateway: broker.NewID()}) {
		t.Fatal("the caller of a foreman that never announced itself taken for present")
	}

	// The job records: a replica's "not found" (a responder answering half the reads) is
	// checked with the leader.
	j, err := caller.Submit(ctx, &broker.Job{Model: "tiny-a", Kind: broker.KindChat}, []byte(`{"model":"tiny-a"}`))
	if err != nil {
		t.Fatal(err)
	}
	lagDirectReads(t, c)
	for i := range 50 {
		if _, _, err := single.Get(ctx, j.ID); err != nil {
			t.Fatalf("read %d by the foreman started with one replica: %v", i, err)
		}
	}
}

// A foreman restarted with more replicas raises the targets' and the known models'
// buckets too, not only the job streams: with them left at one replica, the node holding
// them down left every foreman unable to read the other Macs' targets.
func TestClusterMoreReplicasRaiseEveryBucket(t *testing.T) {
	if testing.Short() {
		t.Skip("3-node cluster; skipped with -short")
	}
	t.Parallel()
	c := brokertest.NewCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// As a foreman publishes at every poll, a write lost while the bucket gains its
	// replicas is made again.
	publish := func(st *broker.Store) {
		for _, write := range []func(context.Context) error{
			func(ctx context.Context) error {
				return st.PublishTarget(ctx, broker.Target{Name: "mac", URL: "http://127.0.0.1:11434", Reachable: true})
			},
			func(ctx context.Context) error {
				return st.RememberModels(ctx, broker.KnownModels{Name: "mac", Models: []string{"tiny-a:latest"}})
			},
		} {
			for {
				wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
				err := write(wctx)
				wcancel()
				if err == nil {
					break
				}
				if ctx.Err() != nil {
					t.Fatal(err)
				}
			}
		}
	}
	publish(c.Open(t, func(cfg *broker.Config) { cfg.Replicas = 1 }))
	publish(c.Open(t, nil)) // 3 replicas
	js := brokertest.JetStream(t, c.Connect(t))
	for _, bucket := range []string{broker.TargetsBucket, broker.KnownModelsBucket} {
		st, err := js.Stream(ctx, "KV_"+bucket)
		if err != nil {
			t.Fatal(err)
		}
		if r := st.CachedInfo().Config.Replicas; r != 3 {
			t.Errorf("bucket %s: %d replicas, want 3", bucket, r)
		}
	}
}

// lagDirectReads has every direct read of the job bucket answered "not found" half the
// time, as a replica behind its leader does, until the test ends (lagReads). It returns
// the responder's connection.
func lagDirectReads(t *testing.T, c *brokertest.Cluster) *nats.Conn {
	t.Helper()
	lagging := c.Connect(t)
	notFound := &nats.Msg{Header: nats.Header{"Status": []string{"404"}, "Description": []string{"Message Not Found"}}}
	lagReads(t, c, lagging, "$JS.API.DIRECT.GET.KV_"+broker.JobsBucket+".>", notFound)
	return lagging
}

// lagReads has half the requests on subj (a direct get's, which a replica answers) go to
// a responder on nc instead, answering each with answer, until the test ends; the other
// half go to the servers. Which half is the cluster's choice, by a weighted subject
// mapping on every node, not a race between the responder and the replicas: a loaded
// machine cannot make the responder lose every time.
func lagReads(t *testing.T, c *brokertest.Cluster, nc *nats.Conn, subj string, answer *nats.Msg) {
	t.Helper()
	standIn := fmt.Sprintf("lagging.%d", lagSubjects.Add(1))
	if strings.HasSuffix(subj, ".>") {
		standIn += ".>"
	}
	sub, err := nc.Subscribe(standIn, func(m *nats.Msg) { _ = m.RespondMsg(&nats.Msg{Header: answer.Header, Data: answer.Data}) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	c.MapSubject(t, subj, standIn, 50)
}

// clusterJob runs t in parallel on a 3-node cluster (skipped with -short), with a store
// opened on it, a context of a minute, and one chat job submitted.
func clusterJob(t *testing.T, adjust ...func(*broker.Config)) (*brokertest.Cluster, *broker.Store, context.Context, *broker.Job) {
	t.Helper()
	if testing.Short() {
		t.Skip("3-node cluster; skipped with -short")
	}
	t.Parallel()
	c := brokertest.NewCluster(t, 3)
	st := c.Open(t, func(cfg *broker.Config) {
		for _, f := range adjust {
			f(cfg)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	j, err := st.Submit(ctx, &broker.Job{Model: "tiny-a", Kind: broker.KindChat}, []byte(`{"model":"tiny-a"}`))
	if err != nil {
		t.Fatal(err)
	}
	return c, st, ctx, j
}

// lagSubjects numbers the stand-ins' subjects.
var lagSubjects atomic.Int64

// askedLeader fails the test unless leaderReads (a subscription to a stream's
// message-get requests, which only its leader answers) has seen one.
func askedLeader(t *testing.T, leaderReads *nats.Subscription) {
	t.Helper()
	// The copies of the leader's reads reach the subscription by another route than the
	// reads themselves: give the first of them time to come.
	if _, err := leaderReads.NextMsg(10 * time.Second); err != nil {
		t.Fatal("the store never asked the stream's leader")
	}
}

// A replica behind the queue stream's leader answers the head reads of the worker's
// queue index "not found" for a job just queued (a direct get, which any replica
// serves). The index then records the queue as empty against a stream state that counts
// the job, and no later quick look reads that queue again: the job stayed hidden from
// an idle worker until the index's full refresh, 30 s later (seen on a 3-node cluster: a
// sync chat queued as the worker finished the job before it waited 30 s and its caller
// gave up, the Mac idle). A head read that finds nothing asks the stream's leader.
func TestClusterQueueHeadPastALaggingReplica(t *testing.T) {
	c, st, ctx, j := clusterJob(t)
	p, ok, err := st.Oldest(ctx, 0)
	if err != nil || !ok || p.JobID != j.ID {
		t.Fatalf("head before any lag: %+v %v %v", p, ok, err)
	}
	lagging := c.Connect(t)
	notFound := &nats.Msg{Header: nats.Header{"Status": []string{"404"}, "Description": []string{"Message Not Found"}}}
	lagReads(t, c, lagging, "$JS.API.DIRECT.GET."+broker.QueueStream, notFound)
	leaderReads, err := lagging.SubscribeSync("$JS.API.STREAM.MSG.GET." + broker.QueueStream)
	if err != nil {
		t.Fatal(err)
	}
	if err := lagging.Flush(); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		got, ok, err := st.Oldest(ctx, 0)
		if err != nil || !ok || got.JobID != j.ID || got.Seq != p.Seq || got.Token != p.Token {
			t.Fatalf("read %d of the oldest job: %+v %v %v, want %+v", i, got, ok, err, p)
		}
		got, ok, err = st.OldestOf(ctx, p.Token)
		if err != nil || !ok || got.JobID != j.ID || !got.Enqueued.Equal(p.Enqueued) {
			t.Fatalf("read %d of the queue's head: %+v %v %v, want %+v", i, got, ok, err, p)
		}
	}
	// A queue that is empty is still found empty.
	if _, ok, err := st.OldestOf(ctx, p.Token+"-none"); err != nil || ok {
		t.Fatalf("head of an empty queue: %v %v", ok, err)
	}
	askedLeader(t, leaderReads)
}

// A replica behind the targets bucket's leader (one just back from a freeze) answers a
// read of another foreman's entry with an earlier write of it, older than its lifetime
// though that foreman wrote it again since: the entry looked dead, its models unknown,
// and a call for them got 404 "model not found" (seen in a black-box run on thawing a
// frozen node). An entry that looks dead is asked of the leader before it is dropped.
func TestClusterTargetsPastALaggingReplica(t *testing.T) {
	if testing.Short() {
		t.Skip("3-node cluster; skipped with -short")
	}
	t.Parallel()
	c := brokertest.NewCluster(t, 3)
	const life = 500 * time.Millisecond
	st := c.Open(t, func(cfg *broker.Config) { cfg.TargetTTL = life })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	publishMacB(t, ctx, st)
	lagging := c.Connect(t)
	old, err := lagging.RequestWithContext(ctx, macBEntry, nil)
	if err != nil || old.Header.Get("Status") != "" {
		t.Fatalf("the entry's first write: %v %v", old, err)
	}
	written, err := time.Parse(time.RFC3339Nano, old.Header.Get("Nats-Time-Stamp"))
	if err != nil {
		t.Fatalf("the entry's stamp: %v", err)
	}
	// The first write outlives its lifetime; the foreman writes again meanwhile.
	eventually(t, 30*time.Second, "the first write past its lifetime", func() bool {
		publishMacB(t, ctx, st)
		return time.Since(written) > 2*life
	})
	lagReads(t, c, lagging, macBEntry, &nats.Msg{Header: old.Header, Data: old.Data})
	readsMacB(t, ctx, st, 20, 0)
}

// macBEntry is the direct-get subject of mac-b's entry in the targets bucket, the one
// publishMacB writes.
const macBEntry = "$JS.API.DIRECT.GET.KV_" + broker.TargetsBucket + ".$KV." + broker.TargetsBucket + ".target.mac-b"

// publishMacB writes the entry of another Mac, mac-b, with one model, through st.
func publishMacB(t *testing.T, ctx context.Context, st *broker.Store) {
	t.Helper()
	if err := st.PublishTarget(ctx, broker.Target{Name: "mac-b", Reachable: true, Models: []string{"tiny-b:latest"}}); err != nil {
		t.Fatal(err)
	}
}

// readsMacB reads st's targets n times, each within perRead (0: ctx alone), mac-b's
// entry written again before each (fresh, and the read the bucket's, not a cached
// one), and wants mac-b alone every time.
func readsMacB(t *testing.T, ctx context.Context, st *broker.Store, n int, perRead time.Duration) {
	t.Helper()
	for i := range n {
		publishMacB(t, ctx, st)
		rctx, cancel := ctx, context.CancelFunc(func() {})
		if perRead > 0 {
			rctx, cancel = context.WithTimeout(ctx, perRead)
		}
		got, err := st.Targets(rctx)
		cancel()
		if err != nil {
			t.Fatalf("read %d: %v", i, err)
		}
		if len(got) != 1 || got[0].Name != "mac-b" {
			t.Fatalf("read %d: targets %+v, want mac-b", i, got)
		}
	}
}

// A replica that has no copy of another foreman's entry yet (a foreman that just joined,
// or a node thawed from a freeze that expired the entry's earlier write by its own clock
// before it caught up) answers a read of it "not found", though the bucket's leader lists
// the key: the entry was left out, its Mac's models unknown, and a call for them got 404
// "model not found" until the next read. A listed key found nowhere is asked of the leader.
func TestClusterTargetsPastAReplicaWithoutTheEntry(t *testing.T) {
	if testing.Short() {
		t.Skip("3-node cluster; skipped with -short")
	}
	t.Parallel()
	c := brokertest.NewCluster(t, 3)
	st := c.Open(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	publishMacB(t, ctx, st)
	lagging := c.Connect(t)
	notFound := &nats.Msg{Header: nats.Header{"Status": []string{"404"}, "Description": []string{"Message Not Found"}}}
	lagReads(t, c, lagging, macBEntry, notFound)
	readsMacB(t, ctx, st, 20, 0)
}
