package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/ollama/ollama/api"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
)

// Submitting over NATS and waiting for the job on its state subject: SubmitAsync sends
// the job by request/reply on foreman.jobs.submit, and Wait follows
// foreman.job.<id>.state until the job ends, then reads its result.
func ExampleClient_Wait() {
	f := exampleForeman()
	defer f.Close()
	nc, err := nats.Connect(f.NATSURL, nats.UserInfo(natsUser, natsPassword), nats.Timeout(10*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	c, err := client.New(f.URL, client.WithNATS(nc))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	id, err := c.SubmitAsync(ctx, client.SubmitRequest{
		Generate:       &client.GenerateRequest{Model: "tiny-b", Prompt: "Name a color."},
		IdempotencyKey: "colors-1", // a retried submit returns this job, not a second one
	})
	if err != nil {
		log.Fatal(err)
	}
	res, err := c.Wait(ctx, id)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(res.Job.ID == id, res.Job.State, res.Text())
	// Output: true done amber juniper sierra birch ember
}

// A webhook receiver: it checks each delivery's signature and age with VerifyWebhook
// before trusting it, and drops a delivery it has had already (deliveries are
// at-least-once, and webhook-id stays the same on every retry).
func ExampleVerifyWebhook_receiver() {
	const secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" // foreman's FOREMAN_WEBHOOK_SECRET
	f, err := newForeman(foremanConfig{WebhookSecret: secret})
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()

	finished := make(chan client.Event, 1)
	var mu sync.Mutex
	seen := map[string]bool{}
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
		if err != nil {
			http.Error(w, "bad body", http.StatusBadRequest)
			return
		}
		// Forged, tampered or older than 5 minutes: refused.
		if err := client.VerifyWebhook(secret, r.Header, body, 5*time.Minute); err != nil {
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		mu.Lock()
		again := seen[r.Header.Get("webhook-id")]
		seen[r.Header.Get("webhook-id")] = true
		mu.Unlock()
		var e client.Event
		if err := json.Unmarshal(body, &e); err != nil {
			http.Error(w, "not a job event", http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusNoContent) // any 2xx: delivered
		if !again && e.State.Terminal() {
			finished <- e
		}
	}))
	defer hook.Close()

	c, err := client.New(f.URL)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	id, err := c.SubmitAsync(ctx, client.SubmitRequest{
		Chat:          &client.ChatRequest{Model: "tiny-a", Messages: []client.Message{{Role: "user", Content: "hi"}}},
		WebhookURL:    hook.URL,
		WebhookEvents: []client.State{client.StateDone, client.StateFailed, client.StateCanceled},
	})
	if err != nil {
		log.Fatal(err)
	}
	e := <-finished
	fmt.Println(e.JobID == id, e.State)
	// The event is thin: the result is read with Job or Wait.
	res, err := c.Wait(ctx, e.JobID)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(res.Text())
	// Output:
	// true done
	// cedar lagoon quartz zephyr granite
}

// Polling: a client that neither has NATS nor can take webhooks reads the job until it
// ends. Submit and Wait do this themselves with WithPollingOnly; this is the loop by hand.
func ExampleWithPollingOnly() {
	f := exampleForeman()
	defer f.Close()
	c, err := client.New(f.URL, client.WithPollingOnly(), client.WithPollInterval(50*time.Millisecond))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	id, err := c.SubmitAsync(ctx, client.SubmitRequest{
		Chat: &client.ChatRequest{Model: "tiny-a", Messages: []client.Message{{Role: "user", Content: "hi"}}},
	})
	if err != nil {
		log.Fatal(err)
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		j, err := c.Job(ctx, id)
		if err != nil {
			log.Fatal(err)
		}
		if j.State.Terminal() {
			res := client.Result{Job: j, Body: j.Result}
			fmt.Println(j.State, res.Text())
			break
		}
		// While it waits, j.QueuePosition and j.ETA say when it should start.
		select {
		case <-ctx.Done():
			log.Fatal(ctx.Err())
		case <-tick.C:
		}
	}
	// Output: done cedar lagoon quartz zephyr granite
}

// Watching every job over NATS: Watch("") relays every state event on
// foreman.job.*.state until its context ends.
func ExampleClient_Watch_allJobs() {
	f := exampleForeman()
	defer f.Close()
	c, err := client.New(f.URL, client.WithNATSURL(f.NATSURL, nats.UserInfo(natsUser, natsPassword), nats.Timeout(10*time.Second)))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	events, err := c.Watch(ctx, "")
	if err != nil {
		log.Fatal(err)
	}
	id, err := c.SubmitAsync(ctx, client.SubmitRequest{
		Embed: &client.EmbedRequest{Model: "tiny-embed", Input: json.RawMessage(`"a sentence"`)},
	})
	if err != nil {
		log.Fatal(err)
	}
	for e := range events {
		if e.Lost > 0 {
			// Events were missed (a reconnect, a reader too slow): re-read with Jobs.
			continue
		}
		if e.JobID == id && e.State.Terminal() {
			fmt.Println(e.Model, e.State)
			break
		}
	}
	// Output: tiny-embed done
}

// Ollama's own Go client, pointed at foreman, runs its chats through foreman's queue
// unchanged: foreman speaks Ollama's API.
func Example_ollamaClient() {
	f := exampleForeman()
	defer f.Close()
	base, err := url.Parse(f.URL) // foreman's URL where OLLAMA_HOST was
	if err != nil {
		log.Fatal(err)
	}
	oc := api.NewClient(base, http.DefaultClient)

	req := &api.ChatRequest{Model: "tiny-a", Messages: []api.Message{{Role: "user", Content: "Hello"}}}
	err = oc.Chat(context.Background(), req, func(r api.ChatResponse) error {
		fmt.Print(r.Message.Content)
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println()
	// Output: birch sierra juniper amber flint
}

// Errors say what happened and match sentinels with errors.Is.
func Example_errors() {
	f := exampleForeman()
	defer f.Close()
	c, err := client.New(f.URL)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	_, err = c.Job(context.Background(), "01J00000000000000000000000")
	var ae *client.APIError
	fmt.Println(errors.Is(err, client.ErrNotFound), errors.As(err, &ae) && ae.Status == http.StatusNotFound)
	fmt.Println(err)

	// Other sentinels: ErrQueueFull (submit again after APIError.RetryAfter),
	// ErrUnauthorized, ErrJobFailed and ErrJobCanceled (a *JobError with the final
	// record), ErrUnreachable (a *ConnectionError) and ErrCutShort (a *CutShortError).
	down, _ := client.New("http://127.0.0.1:1")
	_, err = down.Tags(context.Background())
	fmt.Println(errors.Is(err, client.ErrUnreachable))
	// Output:
	// true true
	// job not found: 01J00000000000000000000000
	// true
}
