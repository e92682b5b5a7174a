package gateway

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// A keyed retry that puts a job back in the queue (its submit died between the record
// and the queue message) queues the body the job was first queued with. On a shared NATS
// (OwnModelsOnly) a call by an alias of this Mac's is queued under the alias's model,
// its body naming that model last (bodyFor, ADR-0068), so that another Mac that has the
// model but not the alias can run it: the retry's body names only the alias, and queued
// as it came such a Mac answers 404. So it is whether the retry's checks pass, or refuse
// it now (the alias gone, ADR-0140: the model not even resolved), and for a body stored
// apart from its message. A call naming the model itself is queued as it came.
func TestKeyedRetryRequeuesTheBodyAsFirstQueued(t *testing.T) {
	t.Parallel()
	chat := func(model, content string) string {
		return `{"model":"` + model + `","messages":[{"role":"user","content":"` + content + `"}]}`
	}
	// named is body with model added as its last "model", where Ollama reads it.
	named := func(body, model string) string { return strings.TrimSuffix(body, "}") + `,"model":"` + model + `"}` }
	// Larger than a queue message holds (broker inlineLimit): stored apart (BodyRef).
	large := strings.Repeat("x", 1<<20)
	for _, c := range []struct {
		name, body, model, want string
		aliasGone, stored       bool
	}{
		{name: "alias", body: chat("fast", "hi"), model: "tiny-b:latest",
			want: named(chat("fast", "hi"), "tiny-b:latest")},
		{name: "alias-refused-now", body: chat("fast", "hi"), model: "tiny-b:latest", aliasGone: true,
			want: named(chat("fast", "hi"), "tiny-b:latest")},
		{name: "alias-stored-body", body: chat("fast", large), model: "tiny-b:latest", stored: true,
			want: named(chat("fast", large), "tiny-b:latest")},
		{name: "model", body: chat("tiny-b", "hi"), model: "tiny-b", want: chat("tiny-b", "hi")},
	} {
		for _, via := range []string{"http", "nats"} {
			if c.stored && via == "nats" {
				continue // more than a NATS message holds
			}
			t.Run(via+"/"+c.name, func(t *testing.T) {
				t.Parallel()
				b := newTestBundle(t, withGateway(func(cfg *Config) { cfg.OwnModelsOnly = true }))
				submit := keyedSubmitter(t, b, via)
				ctx := testCtx(t, 30*time.Second)
				b.Fake.SetAlias(ollama.Alias{Alias: "fast", Target: "tiny-b"})
				refreshInventory(t, ctx, b)
				// What a submit leaves when it dies after the record and before the publish:
				// the key claimed, the job record queued under the model, no queue message
				// (and no stored body).
				id := broker.NewID()
				sum := sha256.Sum256([]byte("chat\n" + c.body))
				claim := broker.IdempotencyClaim{JobID: id, BodySHA256: hex.EncodeToString(sum[:]), Until: time.Now()}
				if _, created, err := b.Broker.Store.ClaimIdempotencyKey(ctx, scopedIdempotencyKey("", "k1"), claim); err != nil || !created {
					t.Fatalf("claim: %v %v", created, err)
				}
				j := &broker.Job{ID: id, Model: c.model, Kind: broker.KindChat, Idempotency: broker.IdempotencyRef(scopedIdempotencyKey("", "k1"))}
				if c.stored {
					j.BodyRef = id + "/request"
				}
				b.Broker.CreateRecord(t, j)
				if c.aliasGone {
					deleteAlias(t, ctx, b, "fast")
					if a := submit(ctx, c.body, "another-key"); a.status != http.StatusNotFound {
						t.Fatalf("a new request by the alias gone: %s, want 404; the test proves nothing", a)
					}
				}
				retry := submit(ctx, c.body, "k1")
				if retry.status != http.StatusAccepted || retry.id != id || (via == "http" && !retry.replayed) {
					t.Fatalf("retry: %.300s (replayed %v), want the job %s replayed", retry, retry.replayed, id)
				}
				if got := queuedBody(t, b.Broker.Store, c.model); !bytes.Equal(got, []byte(c.want)) {
					t.Errorf("the job queued again with the body %.300s (%d bytes)\nwant %.300s (%d bytes), ending %s",
						got, len(got), c.want, len(c.want), c.want[max(0, len(c.want)-40):])
				}
			})
		}
	}
}

// deleteAlias removes alias at the fake target and polls it.
func deleteAlias(t *testing.T, ctx context.Context, b *testBundle, alias string) {
	t.Helper()
	b.deleteAtFake(t, ctx, ollama.AliasesPath, `{"alias":"`+alias+`"}`)
	refreshInventory(t, ctx, b)
}
