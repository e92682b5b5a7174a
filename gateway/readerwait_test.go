package gateway

import (
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// A runner pings a sync job's feed (ADR-0072) only when the job's caller waits on
// another foreman: foreman serve's own sync calls (gateway and worker on one Store, the
// hot path) make none, nor does an async job; a call another foreman on the same NATS
// took does.
func TestReaderPingOnlyForACallerOnAnotherForeman(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil)
	ctx := testCtx(t, 60*time.Second)
	nc, err := b.Broker.Server.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	var mu sync.Mutex
	pinged := map[string]int{} // by job id
	sub, err := nc.Subscribe(broker.PingSubject("*"), func(m *nats.Msg) {
		id := strings.TrimSuffix(strings.TrimPrefix(m.Subject, "foreman.job."), ".ping")
		mu.Lock()
		defer mu.Unlock()
		pinged[id]++
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	var quiet []string // jobs that must make no ping
	for _, stream := range []string{"true", "false"} {
		r := post(t, ctx, b.URL, "/api/chat", chatBody("tiny-a", "hi", stream))
		if r.Status != http.StatusOK {
			t.Fatalf("sync call, stream %s: %d %s", stream, r.Status, r.Body)
		}
		quiet = append(quiet, r.Header.Get(HeaderJobID))
	}
	async := jobsSubmit(t, b.testBundle, `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`)
	waitJobState(t, b.testBundle, async, broker.StateDone)
	quiet = append(quiet, async)

	// Another foreman's gateway on the same NATS, without a worker: b's worker runs its
	// call, for a caller whose feed is not in its process.
	onc, err := b.Broker.Server.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(onc.Close)
	other, err := broker.Open(ctx, broker.Config{Conn: onc})
	if err != nil {
		t.Fatal(err)
	}
	r := post(t, ctx, startClusterGateway(t, other), "/api/chat", chatBody("tiny-a", "hi", "true"))
	if r.Status != http.StatusOK {
		t.Fatalf("sync call taken by another foreman: %d %s", r.Status, r.Body)
	}
	elsewhere := r.Header.Get(HeaderJobID)
	// One worker's pings come in the order it sent them: once this job's is here, any of
	// the earlier jobs' would be.
	eventually(t, 10*time.Second, "the ping of the call another foreman took", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return pinged[elsewhere] > 0
	})
	mu.Lock()
	defer mu.Unlock()
	for _, id := range quiet {
		if pinged[id] != 0 {
			t.Errorf("job %s: %d pings, want none", id, pinged[id])
		}
	}
}
