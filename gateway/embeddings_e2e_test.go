package gateway

import (
	"encoding/json"
	"fmt"
	"math"
	"testing"
	"time"
)

// Against the real Ollama: an embedding call on a chat model, queued (ADR-0053), answers
// as Ollama does directly; and a client looping such calls on another chat model no
// longer turns the loaded model's queued jobs into model loads: its calls wait their
// turn in their own model's queue.
func TestE2EEmbeddingOnAChatModelIsQueued(t *testing.T) {
	b := newE2EBundle(t, nil)
	ctx := testCtx(t, 3*time.Minute)
	b.warm(t, ctx, "tiny-a")

	body := []byte(`{"model":"tiny-a","input":["the sea","a boat"]}`)
	direct, via := post(t, ctx, b.Target, "/api/embed", body), post(t, ctx, b.URL, "/api/embed", body)
	if via.Status != 200 || via.Header.Get(HeaderJobID) == "" {
		t.Fatalf("through foreman: %d (job %q) %s", via.Status, via.Header.Get(HeaderJobID), via.Body)
	}
	sameEmbeddings(t, direct.Body, via.Body)

	_, ok := b.loads(t)
	if !ok {
		t.Skip("the real Ollama's log cannot be read to count loads")
	}
	// A client loops embedding calls on tiny-b; once its first is answered (tiny-b
	// loaded), six jobs of tiny-a are queued at once.
	stop, done, first := make(chan struct{}), make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			post(t, ctx, b.URL, "/api/embed", []byte(`{"model":"tiny-b","input":""}`))
			if i == 0 {
				close(first)
			}
		}
	}()
	<-first
	before, _ := b.loads(t)
	const jobs = 6
	results := make(chan int, jobs)
	for i := range jobs {
		go func() {
			results <- post(t, ctx, b.URL, "/api/generate", sampledBody("tiny-a", fmt.Sprint("count ", i), 8, 7)).Status
		}()
	}
	for range jobs {
		if s := <-results; s != 200 {
			t.Errorf("generate: %d", s)
		}
	}
	close(stop)
	<-done
	// Queued, the looped calls wait while tiny-a's jobs drain: tiny-a loads once, tiny-b
	// once more after them. Straight to Ollama, each looped call swapped tiny-b in and
	// the next job swapped tiny-a back (17 loads for 8 jobs in the measurement that
	// found it).
	if after, _ := b.loads(t); after-before > 2 {
		t.Errorf("%d queued jobs of one model cost %d model loads while a client looped embedding calls on another model", jobs, after-before)
	}
}

// sameEmbeddings compares the "embeddings" of two /api/embed answers (a float's last
// digits may differ between two runs of a model).
func sameEmbeddings(t *testing.T, direct, via []byte) {
	t.Helper()
	var d, v struct {
		Model      string      `json:"model"`
		Embeddings [][]float64 `json:"embeddings"`
	}
	if err := json.Unmarshal(direct, &d); err != nil {
		t.Fatalf("direct answer %s: %v", direct, err)
	}
	if err := json.Unmarshal(via, &v); err != nil {
		t.Fatalf("answer through foreman %s: %v", via, err)
	}
	if d.Model != v.Model || len(d.Embeddings) != len(v.Embeddings) || len(d.Embeddings) == 0 {
		t.Fatalf("through foreman %s\ndirect %s", via, direct)
	}
	for i := range d.Embeddings {
		if len(d.Embeddings[i]) != len(v.Embeddings[i]) {
			t.Fatalf("embedding %d: %d dimensions through foreman, %d direct", i, len(v.Embeddings[i]), len(d.Embeddings[i]))
		}
		for j := range d.Embeddings[i] {
			if math.Abs(d.Embeddings[i][j]-v.Embeddings[i][j]) > 1e-4 {
				t.Fatalf("embedding %d differs at %d: %v through foreman, %v direct", i, j, v.Embeddings[i][j], d.Embeddings[i][j])
			}
		}
	}
}
