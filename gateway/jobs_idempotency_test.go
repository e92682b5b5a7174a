package gateway

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// A crash after the job record and before its queue message: a retry with the same key
// gets the job back and puts it in the queue again, so it runs.
func TestIdempotentRetryRequeuesAJobLeftWithoutQueueMessage(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	ctx := testCtx(t, 30*time.Second)
	body := `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`
	// What a submit leaves when it dies after the record and before the publish: the key
	// claimed, the job record queued, no queue message.
	id := broker.NewID()
	sum := sha256.Sum256([]byte("chat\n" + body))
	if _, created, err := b.Broker.Store.ClaimIdempotencyKey(ctx, scopedIdempotencyKey("", "crash-after-record"), broker.IdempotencyClaim{JobID: id, BodySHA256: hex.EncodeToString(sum[:]), Until: time.Now()}); err != nil || !created {
		t.Fatalf("claim: %v %v", created, err)
	}
	now := time.Now().UTC()
	rec, _ := json.Marshal(&broker.Job{ID: id, Model: "tiny-a", Kind: broker.KindChat, State: broker.StateQueued, CreatedAt: now, At: now})
	if _, err := b.Broker.JobRecords(t).Create(ctx, "job."+id, rec); err != nil {
		t.Fatal(err)
	}
	resp, out := b.request(t, http.MethodPost, "/jobs", []byte(body), "Idempotency-Key", "crash-after-record")
	var again submitted
	_ = json.Unmarshal(out, &again)
	if resp.StatusCode != http.StatusAccepted || again.JobID != id || resp.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("retry: %d %s, want the job %s replayed", resp.StatusCode, out, id)
	}
	if p, ok, err := b.Broker.Store.Oldest(ctx, 0); err != nil || !ok || p.JobID != id {
		t.Fatalf("after the retry the queue holds %+v (%v, %v), want job %s", p, ok, err, id)
	}
	startQueuedWorker(t, worker.Config{Store: b.Broker.Store, Target: b.Target, Inventory: b.Inv})
	waitRecord(t, ctx, b.Broker.Store, id, func(j *broker.Job) bool { return j.State == broker.StateDone })
}

// A first request slower than any fixed wait (held here well past 2 s between its claim
// and its job) keeps its key: a concurrent retry waits for its job instead of making a
// second one.
func TestIdempotencyKeyOfASlowFirstRequestIsNotTakenOver(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	ctx := testCtx(t, 30*time.Second)
	entered := make(chan string, 2)
	hold := make(chan struct{})
	unhold := sync.OnceFunc(func() { close(hold) })
	t.Cleanup(unhold)
	b.GW.beforeSubmit = func(id string) {
		entered <- id
		<-hold
	}
	body := `{"model":"tiny-a","messages":[]}`
	type answer struct {
		status   int
		id       string
		replayed bool
	}
	send := func(out chan<- answer) {
		resp, data := b.request(t, http.MethodPost, "/jobs", []byte(body), "Idempotency-Key", "slow")
		var s submitted
		_ = json.Unmarshal(data, &s)
		out <- answer{resp.StatusCode, s.JobID, resp.Header.Get("Idempotent-Replayed") == "true"}
	}
	firstC, retryC := make(chan answer, 1), make(chan answer, 1)
	go send(firstC)
	var firstID string
	select {
	case firstID = <-entered:
	case <-ctx.Done():
		t.Fatal("first request never claimed its key")
	}
	go send(retryC)
	// The first request stays slow for longer than the old fixed 2 s wait.
	time.AfterFunc(2500*time.Millisecond, unhold)
	first, retry := <-firstC, <-retryC
	if first.status != http.StatusAccepted || first.id != firstID {
		t.Fatalf("first request: %+v, want 202 with %s", first, firstID)
	}
	if retry.status != http.StatusAccepted || retry.id != firstID || !retry.replayed {
		t.Fatalf("retry: %+v, want the first request's job %s replayed", retry, firstID)
	}
	if n, err := b.Broker.Store.QueueLen(ctx); err != nil || n != 1 {
		t.Fatalf("queue holds %d jobs (%v), want 1", n, err)
	}
	if jobs := jobsList(t, b, ""); len(jobs) != 1 {
		t.Fatalf("%d job records, want 1", len(jobs))
	}
}

// An Idempotency-Key is one caller's: with named tokens, bob's request with alice's key
// neither gets alice's job back nor is refused for another body; it makes bob's own job,
// and his retry gets that one.
func TestIdempotencyKeysArePerProgram(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t, withGateway(func(c *Config) {
		c.AuthTokens = []NamedToken{{"alice", "tokenA"}, {"bob", "tokenB"}}
	}))
	as := func(tok string) []string { return []string{"Authorization", "Bearer " + tok, "Idempotency-Key", "k1"} }
	body := `{"model":"tiny-a","messages":[]}`
	b.Token = "tokenA"
	alices := jobsSubmit(t, b, body, as("tokenA")...)
	resp, out := b.request(t, http.MethodPost, "/jobs", []byte(body), as("tokenB")...)
	var bobs submitted
	_ = json.Unmarshal(out, &bobs)
	if resp.StatusCode != http.StatusAccepted || bobs.JobID == "" || bobs.JobID == alices || resp.Header.Get("Idempotent-Replayed") != "" {
		t.Fatalf("bob with alice's key: %d %s (replayed %q), want a job of his own, not %s",
			resp.StatusCode, out, resp.Header.Get("Idempotent-Replayed"), alices)
	}
	resp, out = b.request(t, http.MethodPost, "/jobs", []byte(`{"model":"tiny-b"}`), as("tokenB")...)
	wantJobError(t, "bob's key with another body", resp, out, http.StatusUnprocessableEntity)
	resp, out = b.request(t, http.MethodPost, "/jobs", []byte(body), as("tokenA")...)
	var again submitted
	_ = json.Unmarshal(out, &again)
	if resp.StatusCode != http.StatusAccepted || again.JobID != alices || resp.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("alice's retry: %d %s, want her job %s replayed", resp.StatusCode, out, alices)
	}
}

// An Idempotency-Key lives as long as its job. Its claim is written at the submit; the
// job's record is written again later (a cancel here; a start, a result or a refresh of
// a long run alike), and lives a job TTL past that write. Once the claim as first written
// has aged out (a TTL after the submit), a retry with the key and the body still gets the
// job back, as GET /jobs/{id} does, not a second job that runs the request again.
func TestIdempotencyKeyLivesAsLongAsItsJob(t *testing.T) {
	t.Parallel()
	const ttl = 8 * time.Second // the record outlives the claim's first revision by half of it: room on a loaded machine
	b := newTestBundle(t, withBroker(brokertest.WithStore(func(c *broker.Config) { c.JobTTL = ttl })))
	ctx := testCtx(t, 30*time.Second)
	body := `{"model":"tiny-a","messages":[]}`
	first := jobsSubmit(t, b, body, "Idempotency-Key", "k1")
	sum := sha256.Sum256([]byte(scopedIdempotencyKey("", "k1")))
	claim, err := b.Broker.JobRecords(t).Get(ctx, "idem."+hex.EncodeToString(sum[:]))
	if err != nil {
		t.Fatal(err)
	}
	// Halfway through the claim's TTL the record is written again.
	select {
	case <-time.After(time.Until(claim.Created().Add(ttl / 2))):
	case <-ctx.Done():
		t.Fatal(ctx.Err())
	}
	if _, err := b.Broker.Store.Cancel(ctx, first, "changed my mind"); err != nil {
		t.Fatal(err)
	}
	// The claim's first revision ages out: without another one, so does the key.
	records, err := b.Broker.JetStream(t).Stream(ctx, "KV_"+broker.JobsBucket)
	if err != nil {
		t.Fatal(err)
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		_, err := records.GetMsg(ctx, claim.Revision())
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			t.Fatalf("the claim's first revision never aged out: %v", ctx.Err())
		}
	}
	if v := jobsGet(t, b, first); v.State != broker.StateCanceled {
		t.Fatalf("first job %s is %s, want canceled", first, v.State)
	}
	resp, out := b.request(t, http.MethodPost, "/jobs", []byte(body), "Idempotency-Key", "k1")
	var again submitted
	_ = json.Unmarshal(out, &again)
	if resp.StatusCode != http.StatusAccepted || again.JobID != first || resp.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("retry while job %s stands: %d %s (replayed %q), want that job replayed",
			first, resp.StatusCode, out, resp.Header.Get("Idempotent-Replayed"))
	}
}

// The key covers the job, not how its object was spaced nor the foreman fields around it:
// a client writing ", " and ": " (Python's json.dumps) that adds or drops its webhook URL
// on a retry gets its job back. The digest was of the body as sent when it had no foreman
// field and of its members re-encoded when it had one, so such a retry was a 422.
func TestIdempotencyKeyIgnoresSpacingAndWebhookFields(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	const (
		spaced  = `{"model": "tiny-a", "messages": [{"role": "user", "content": "hi"}]}`
		hooked  = `{"model": "tiny-a", "messages": [{"role": "user", "content": "hi"}], "state_webhook_url": "http://127.0.0.1:9/a"}`
		compact = `{"model":"tiny-a","messages":[{"role": "user", "content": "hi"}]}`
		tight   = `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}` // nested values too
		other   = `{"model": "tiny-a", "messages": [{"role": "user", "content": "bye"}]}`
	)
	for _, c := range []struct {
		key, first string
		retries    []string
	}{
		{"with-hook-first", hooked, []string{spaced, compact, tight, hooked}},
		{"without-hook-first", spaced, []string{hooked, compact, tight, spaced}},
	} {
		first := jobsSubmit(t, b, c.first, "Idempotency-Key", c.key)
		for _, body := range c.retries {
			wantReplayed(t, b, c.key, body, first)
		}
		resp, out := b.request(t, http.MethodPost, "/jobs", []byte(other), "Idempotency-Key", c.key)
		wantJobError(t, c.key+": another body", resp, out, http.StatusUnprocessableEntity)
	}
	if n, err := b.Broker.Store.QueueLen(testCtx(t, 5*time.Second)); err != nil || n != 2 {
		t.Fatalf("queue holds %d jobs (%v), want 2", n, err)
	}
}

// A claim stored by a foreman from before members_sha256 (restarted within the job TTL,
// or not yet upgraded on a shared NATS) has only body_sha256: of the body as sent when it
// had no foreman field, else of its members. A retry matching either is the same job. And
// a claim stored now keeps body_sha256 as such a foreman computes it.
func TestIdempotencyClaimsOfOlderForemen(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	ctx := testCtx(t, 30*time.Second)
	const (
		spaced  = `{"model": "tiny-a", "messages": []}`
		members = `{"model":"tiny-a","messages":[]}`
	)
	digest := func(body string) string {
		sum := sha256.Sum256([]byte("chat\n" + body))
		return hex.EncodeToString(sum[:])
	}
	// oldClaim stores what an older foreman's submit left: the claim and the job record.
	oldClaim := func(key, bodySHA256 string) string {
		id := broker.NewID()
		claim := broker.IdempotencyClaim{JobID: id, BodySHA256: bodySHA256, Until: time.Now()}
		if _, created, err := b.Broker.Store.ClaimIdempotencyKey(ctx, scopedIdempotencyKey("", key), claim); err != nil || !created {
			t.Fatalf("claim %s: %v %v", key, created, err)
		}
		now := time.Now().UTC()
		rec, _ := json.Marshal(&broker.Job{ID: id, Model: "tiny-a", Kind: broker.KindChat, State: broker.StateQueued, CreatedAt: now, At: now})
		if _, err := b.Broker.JobRecords(t).Create(ctx, "job."+id, rec); err != nil {
			t.Fatal(err)
		}
		return id
	}
	// The first request had no foreman field: the digest of the body as sent.
	wantReplayed(t, b, "old-as-sent", spaced, oldClaim("old-as-sent", digest(spaced)))
	// It had a webhook URL: the digest of its members.
	wantReplayed(t, b, "old-members", spaced, oldClaim("old-members", digest(members)))

	jobsSubmit(t, b, spaced, "Idempotency-Key", "new")
	got, created, err := b.Broker.Store.ClaimIdempotencyKey(ctx, scopedIdempotencyKey("", "new"), broker.IdempotencyClaim{JobID: broker.NewID()})
	if err != nil || created || got.BodySHA256 != digest(spaced) || got.MembersSHA256 != digest(members) {
		t.Fatalf("claim stored now: %+v (created %v, %v), want body_sha256 %s and members_sha256 %s",
			got, created, err, digest(spaced), digest(members))
	}
}

// wantReplayed submits body with key and wants the job id replayed.
func wantReplayed(t *testing.T, b *testBundle, key, body, id string) {
	t.Helper()
	resp, out := b.request(t, http.MethodPost, "/jobs", []byte(body), "Idempotency-Key", key)
	var s submitted
	_ = json.Unmarshal(out, &s)
	if resp.StatusCode != http.StatusAccepted || s.JobID != id || resp.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("%s: retry %s: %d %s (replayed %q), want job %s replayed",
			key, body, resp.StatusCode, out, resp.Header.Get("Idempotent-Replayed"), id)
	}
}
