package gateway

import (
	"context"
	"io"
	"net/http"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// A model only another Mac has (digest "" here: the own list lacks it) created again
// there with tools since its capabilities were read is judged as it is now: the confirm
// reads its /api/show again from that Mac, so a tools job for it is accepted, and a sync
// call is no longer sent straight to that Mac's Ollama, which would run it beside its
// worker's job. Before, the confirm re-polled only the own Mac and took the cached answer
// (same digest "", not yet capsTTL old) for confirmed.
func TestCapabilityConfirmOfAnotherMacsModelReadsItAgain(t *testing.T) {
	t.Parallel()
	b, other, ctx := anotherMacsModel(t, nil)
	const job = `{"model":"elsewhere","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f"}}]}`
	const word = "registry.ollama.ai/library/elsewhere:latest does not support tools"
	if got := post(t, ctx, b.URL, "/jobs", []byte(job)); got.Status != http.StatusBadRequest || errorBody(t, got.Body) != word {
		t.Fatalf("before the model changed: %d %s, want 400 %q", got.Status, got.Body, word)
	}
	tools := capabilityAsks{tools: true}
	if !b.GW.refusedWithoutLoad(ctx, broker.KindChat, "elsewhere", tools) {
		t.Fatal("before the model changed: a sync tools chat is not sent straight")
	}

	other.AddModel(ollamatest.Model{Name: "elsewhere:latest", Tools: true, Digest: "sha256:" + digestHex('6')})
	if b.GW.refusedWithoutLoad(ctx, broker.KindChat, "elsewhere", tools) {
		t.Error("after the model was created again with tools: a sync tools chat is sent straight to the other Mac, which runs it")
	}
	if got := post(t, ctx, b.URL, "/jobs", []byte(job)); got.Status != http.StatusAccepted {
		t.Errorf("after the model was created again with tools: %d %s, want 202", got.Status, got.Body)
	}
}

// A confirm of another Mac's model whose /api/show fails (that Mac slow or failing now)
// leaves the answer the cache had: the calls the cache allows go on asking nothing,
// rather than each waiting for a look-up of their own because a refused call's confirm
// failed.
func TestCapabilityConfirmOfAnotherMacsModelThatFailsKeepsTheCache(t *testing.T) {
	t.Parallel()
	b, other, ctx := anotherMacsModel(t, nil)
	tools := capabilityAsks{tools: true}
	if !b.GW.refusedWithoutLoad(ctx, broker.KindChat, "elsewhere", tools) {
		t.Fatal("a sync tools chat of a model without tools is not sent straight")
	}
	other.FailNextOn("/api/show", 1, ollamatest.Fail500)
	if b.GW.refusedWithoutLoad(ctx, broker.KindChat, "elsewhere", tools) {
		t.Error("sent straight though its confirm failed")
	}
	if caps, _, ok := b.GW.cachedCapabilities("elsewhere"); !ok || len(caps) == 0 {
		t.Errorf("the cache after a failed confirm: %v, %v; want the answer it had", caps, ok)
	}
}

// heldShow holds an /api/show while armed, after the target answered it, until the gate
// opens: a look-up that has read the model's capabilities and not yet returned them.
type heldShow struct {
	ollama.Client
	armed atomic.Bool
	read  chan struct{}
	gate  chan struct{}
}

func (h *heldShow) Do(ctx context.Context, method, path string, header http.Header, body io.Reader) (*http.Response, error) {
	resp, err := h.Client.Do(ctx, method, path, header, body)
	if path == "/api/show" && err == nil && h.armed.CompareAndSwap(true, false) {
		h.read <- struct{}{}
		select {
		case <-h.gate:
		case <-ctx.Done():
			resp.Body.Close()
			return nil, ctx.Err()
		}
	}
	return resp, err
}

// While a refused call's confirm reads another Mac's model again (its /api/show slow),
// the calls the cache allows are judged on the cache at once, as on the hot path: they
// do not wait for that look-up. A client repeating a refused call would otherwise hold
// every call of that model for up to an /api/show's bound each time.
func TestCapabilityConfirmOfAnotherMacsModelHoldsNoCallTheCacheAllows(t *testing.T) {
	t.Parallel()
	h := &heldShow{read: make(chan struct{}, 1), gate: make(chan struct{})}
	b, _, ctx := anotherMacsModel(t, func(cl ollama.Client) ollama.Client { h.Client = cl; return h })
	tools := capabilityAsks{tools: true}
	if !b.GW.refusedWithoutLoad(ctx, broker.KindChat, "elsewhere", tools) {
		t.Fatal("a sync tools chat of a model without tools is not sent straight")
	}

	h.armed.Store(true)
	confirmed := make(chan bool, 1)
	go func() { confirmed <- b.GW.refusedWithoutLoad(ctx, broker.KindChat, "elsewhere", tools) }()
	<-h.read // the confirm's look-up is under way
	hot, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	caps, err := b.GW.knownCapabilities(hot, "elsewhere")
	close(h.gate)
	if err != nil || !slices.Contains(caps, "completion") {
		t.Errorf("a plain chat's capabilities while the confirm reads the model again: %v, %v; want the cache's at once", caps, err)
	}
	if !<-confirmed {
		t.Error("the refused call: not sent straight after its confirm")
	}
}

// anotherMacsModel is a gateway whose own Mac ("own") lacks the model "elsewhere", which
// another Mac ("other", returned) has without tools, published as that Mac's entry; wrap,
// when not nil, stands between the gateway and the other Macs' clients.
func anotherMacsModel(t *testing.T, wrap func(ollama.Client) ollama.Client) (*testBundle, *ollamatest.Server, context.Context) {
	t.Helper()
	other := ollamatest.New(t, ollamatest.WithModels(ollamatest.Model{Name: "elsewhere:latest"}))
	b := newTestBundle(t, capsModels(), withGateway(func(c *Config) {
		c.TargetName = "own"
		c.TargetClient = func(u string) (ollama.Client, error) {
			cl, err := ollama.NewClient(ollama.ClientConfig{BaseURL: u})
			if err == nil && wrap != nil {
				return wrap(cl), nil
			}
			return cl, err
		}
	}))
	ctx := testCtx(t, 30*time.Second)
	if err := b.Broker.Store.PublishTarget(ctx, broker.Target{Name: "other", URL: other.URL, Reachable: true,
		Models: []string{"elsewhere:latest"}}); err != nil {
		t.Fatal(err)
	}
	return b, other, ctx
}
