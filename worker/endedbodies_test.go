package worker_test

import (
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/natsd"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// smallPayload is a server max payload small enough that largeChat's body is stored
// apart, in the artifacts object store.
const smallPayload = 64 << 10

func withSmallPayload() brokertest.Option {
	return brokertest.WithNATS(func(c *natsd.Config) { c.MaxPayload = smallPayload })
}

// largeChat queues a chat job whose body is too large for a queue message.
func (tb *testBundle) largeChat(t *testing.T, model string) *broker.Job {
	t.Helper()
	body := fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":%q}]}`, model, strings.Repeat("a", 2*smallPayload))
	j := tb.submit(t, model, broker.KindChat, body)
	if j.BodyRef == "" {
		t.Fatalf("a body of %d bytes was not stored apart", len(body))
	}
	return j
}

// bodyStored reports whether the object ref is in the artifacts object store.
func (tb *testBundle) bodyStored(t *testing.T, ref string) bool {
	t.Helper()
	obs, err := tb.b.JetStream(t).ObjectStore(ctxT(t), broker.ArtifactsBucket)
	if err != nil {
		t.Fatal(err)
	}
	_, err = obs.GetInfo(ctxT(t), ref)
	if err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
		t.Fatal(err)
	}
	return err == nil
}

// A job that waited in the queue for a job TTL ends failed without its stored request
// body, as a job that ends any other way does: the expiry removed its queue message and
// left the body in the object store for another TTL. The store's clock is moved a TTL on
// instead of waiting one, so the body's own expiry is far off.
func TestExpiredJobDropsItsStoredBody(t *testing.T) {
	t.Parallel()
	const ttl = 16 * time.Second
	var ahead atomic.Int64
	tb := setup(t, withSmallPayload(), brokertest.WithStore(func(c *broker.Config) {
		c.JobTTL = ttl
		c.Now = func() time.Time { return time.Now().Add(time.Duration(ahead.Load())) }
	}))
	release := tb.fake.Hold("tiny-a")
	defer release()
	running := tb.chat(t, "tiny-a", 1)
	tb.start(t, worker.Config{})
	if err := tb.fake.WaitStarted(waitCtx(t), "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	waiting := tb.largeChat(t, "tiny-a")
	ahead.Store(int64(ttl))

	got := tb.waitState(t, waiting.ID, broker.StateFailed)
	if got.Error != broker.ExpiredError(ttl, 0) {
		t.Fatalf("error %q, want %q", got.Error, broker.ExpiredError(ttl, 0))
	}
	eventually(t, ttl/4, "the expired job's body dropped", func() bool { return !tb.bodyStored(t, waiting.BodyRef) })
	release()
	tb.waitState(t, running.ID, broker.StateDone)
	tb.waitQueueEmpty(t)
}

// So does a job JetStream gave up on (its delivery-limit advisory): its queue message was
// removed and its body left for a TTL.
func TestDeliveryLimitedJobDropsItsStoredBody(t *testing.T) {
	t.Parallel()
	tb := setup(t, withSmallPayload())
	release := tb.fake.Hold("tiny-a")
	defer release()
	running := tb.chat(t, "tiny-a", 1)
	limited := tb.largeChat(t, "tiny-a")
	info, err := tb.b.JetStream(t).Stream(ctxT(t), broker.QueueStream)
	if err != nil {
		t.Fatal(err)
	}
	seq := info.CachedInfo().State.LastSeq // limited's message
	tb.start(t, worker.Config{})
	if err := tb.fake.WaitStarted(waitCtx(t), "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	adv := fmt.Sprintf(`{"type":"io.nats.jetstream.advisory.v1.max_deliver","stream":%q,"consumer":"c","stream_seq":%d,"deliveries":3}`, broker.QueueStream, seq)
	if err := tb.b.Conn.Publish("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES."+broker.QueueStream+".c", []byte(adv)); err != nil {
		t.Fatal(err)
	}
	tb.waitState(t, limited.ID, broker.StateFailed)
	eventually(t, 10*time.Second, "the delivery-limited job's body dropped", func() bool { return !tb.bodyStored(t, limited.BodyRef) })
	release()
	tb.waitState(t, running.ID, broker.StateDone)
	tb.waitQueueEmpty(t)
}
