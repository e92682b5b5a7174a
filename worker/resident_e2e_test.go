package worker_test

import (
	"bytes"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// realBundle is the store and a worker's target on a real Ollama, with its log for
// counting model loads ("starting runner" lines).
type realBundle struct {
	*testBundle
	inv *ollama.Inventory
	log string
}

// setupReal uses the real Ollama at rawURL; logEnv names its log, else the kit's default
// $REALOLLAMA_HOME (or ~/.cache/foreman-realollama)/logs/ollama-PORT.log.
func setupReal(t *testing.T, rawURL, logEnv string) *realBundle {
	t.Helper()
	target, err := ollama.NewClient(ollama.ClientConfig{BaseURL: rawURL, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	inv := ollama.NewInventory(ollama.InventoryConfig{Client: target, Logger: testLogger()})
	if err := inv.Refresh(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	log := os.Getenv(logEnv)
	if log == "" {
		home := os.Getenv("REALOLLAMA_HOME")
		if home == "" {
			h, _ := os.UserHomeDir()
			home = filepath.Join(h, ".cache", "foreman-realollama")
		}
		u, _ := url.Parse(rawURL)
		log = filepath.Join(home, "logs", "ollama-"+u.Port()+".log")
	}
	return &realBundle{testBundle: &testBundle{b: brokertest.New(t), target: target}, inv: inv, log: log}
}

func (rb *realBundle) loads(t *testing.T) int {
	t.Helper()
	data, err := os.ReadFile(rb.log)
	if err != nil {
		t.Skipf("cannot count model loads: %v", err)
	}
	return bytes.Count(data, []byte("starting runner"))
}

// call runs one request against the target directly (warming a model up).
func (rb *realBundle) call(t *testing.T, body string) {
	t.Helper()
	if _, err := rb.target.Stream(ctxT(t), "/api/chat", []byte(body), func([]byte) error { return nil }); err != nil {
		t.Fatalf("warm-up %s: %v", body, err)
	}
}

func realChat(model string, n int, options string) string {
	opts := `"num_predict":4`
	if options != "" {
		opts += "," + options
	}
	return fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"q%d"}],"stream":false,"options":{%s}}`, model, n, opts)
}

// With two models resident (OLLAMA_MAX_LOADED_MODELS=2) a job for either costs no load,
// and the worker knows it: every job of an alternating A/B backlog starts working, never
// loading, and Ollama loads nothing.
func TestRealOllamaResidentModelsCostNoLoads(t *testing.T) {
	rb := setupReal(t, ollamatest.RealOllama2(t), "FOREMAN_TEST_OLLAMA2_LOG")
	rb.call(t, realChat("tiny-a", 0, ""))
	rb.call(t, realChat("tiny-b", 0, ""))
	if err := rb.inv.Refresh(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if n := len(rb.inv.Loaded()); n != 2 {
		t.Fatalf("%d models loaded after the warm-up, want 2: is OLLAMA_MAX_LOADED_MODELS=2?", n)
	}
	before := rb.loads(t)
	var ids []string
	var watches []*stateWatch
	for i := range 8 {
		m := []string{"tiny-a", "tiny-b"}[i%2]
		j := rb.submit(t, m, broker.KindChat, realChat(m, i+1, ""))
		ids = append(ids, j.ID)
		watches = append(watches, watchStates(t, rb.b.Conn, j.ID))
	}
	// One job a model in a row: every job is a switch.
	rb.start(t, worker.Config{Inventory: rb.inv, MaxConsecutive: 1})
	for i, id := range ids {
		rb.waitState(t, id, broker.StateDone)
		if states := watches[i].until(t); contains(states, broker.StateLoading) {
			t.Errorf("job %d (%s) went through loading with its model resident: %v", i, id, states)
		}
	}
	if n := rb.loads(t) - before; n != 0 {
		t.Errorf("%d model loads for a backlog of two resident models, want 0", n)
	}
}

// Ollama reloads a model for other load options (num_ctx): a backlog mixing them drains
// each value together, one load per value at most.
func TestRealOllamaLoadOptionsDrainTogether(t *testing.T) {
	rb := setupReal(t, ollamatest.RealOllama(t), "FOREMAN_TEST_OLLAMA_LOG")
	before := rb.loads(t)
	var ids []string
	for i := range 6 {
		opts := ""
		if i%2 == 1 {
			opts = `"num_ctx":256`
		}
		ids = append(ids, rb.submit(t, "tiny-a", broker.KindChat, realChat("tiny-a", i, opts)).ID)
	}
	rb.start(t, worker.Config{Inventory: rb.inv})
	for _, id := range ids {
		rb.waitState(t, id, broker.StateDone)
	}
	if n := rb.loads(t) - before; n > 2 {
		t.Errorf("%d model loads for a backlog of two num_ctx values, want at most 2", n)
	}
}
