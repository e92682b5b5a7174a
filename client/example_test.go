package client_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"log"
	"net/http"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
)

// exampleForeman starts an in-process foreman in front of a fake Ollama, so the examples
// really run.
func exampleForeman() *foreman {
	f, err := newForeman(foremanConfig{})
	if err != nil {
		log.Fatal(err)
	}
	return f
}

func ExampleNew() {
	c, err := client.New("http://127.0.0.1:8080",
		client.WithToken("the FOREMAN_AUTH_TOKEN"),
		client.WithPollInterval(2*time.Second),
		client.WithCancelOnContextDone(),
	)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	fmt.Println(c.URL())
	// Output: http://127.0.0.1:8080
}

func ExampleClient_Submit() {
	f := exampleForeman()
	defer f.Close()
	c, err := client.New(f.URL)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := c.Submit(ctx, client.SubmitRequest{
		Chat: &client.ChatRequest{Model: "tiny-a", Messages: []client.Message{{Role: "user", Content: "Why is the sky blue?"}}},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(res.Job.State, res.Text())
	// Output: done ember nimbus willow flint amber
}

func ExampleClient_Submit_failed() {
	f := exampleForeman()
	defer f.Close()
	c, err := client.New(f.URL, client.WithPollingOnly(), client.WithPollInterval(50*time.Millisecond))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	// tiny-embed is an embedding model, which cannot chat: foreman refuses the job at
	// submit, in Ollama's words. A job that fails in its turn (Ollama refusing it then)
	// is a *client.JobError matching client.ErrJobFailed.
	_, err = c.Submit(context.Background(), client.SubmitRequest{
		Chat: &client.ChatRequest{Model: "tiny-embed", Messages: []client.Message{{Role: "user", Content: "hi"}}},
	})
	var ae *client.APIError
	if errors.As(err, &ae) {
		fmt.Println(ae.Status, ae.Message)
	}
	// Output: 400 "tiny-embed" does not support chat
}

func ExampleWithNATSURL() {
	f := exampleForeman()
	defer f.Close()
	// foreman's NATS listener (FOREMAN_NATS_LISTEN) with its client user.
	c, err := client.New(f.URL, client.WithNATSURL(f.NATSURL, nats.UserInfo(natsUser, natsPassword), nats.Timeout(10*time.Second)))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	// The job is submitted over NATS and its states arrive as NATS events.
	var last client.State
	res, err := c.Submit(context.Background(), client.SubmitRequest{
		Generate: &client.GenerateRequest{Model: "tiny-b", Prompt: "Name a color."},
		OnState:  func(e client.Event) { last = e.State }, // queued, loading, working, done
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(c.NATS().IsConnected(), last, res.Text())
	// Output: true done amber juniper sierra birch ember
}

func ExampleClient_Chat() {
	f := exampleForeman()
	defer f.Close()
	c, err := client.New(f.URL)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	reply, err := c.Chat(context.Background(), client.ChatRequest{
		Model:    "tiny-a",
		Messages: []client.Message{{Role: "user", Content: "Hello"}},
	}, func(chunk *client.ChatResponse) error {
		fmt.Printf("[%s]", chunk.Message.Content) // each token as it arrives
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println()
	fmt.Println(reply.Message.Content)
	// Output:
	// [birch][ sierra][ juniper][ amber][ flint][]
	// birch sierra juniper amber flint
}

func ExampleClient_Watch() {
	f := exampleForeman()
	defer f.Close()
	c, err := client.New(f.URL, client.WithPollInterval(20*time.Millisecond))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	ctx := context.Background()
	id, err := c.SubmitAsync(ctx, client.SubmitRequest{
		Chat: &client.ChatRequest{Model: "tiny-a", Messages: []client.Message{{Role: "user", Content: "hi"}}},
	})
	if err != nil {
		log.Fatal(err)
	}
	events, err := c.Watch(ctx, id)
	if err != nil {
		log.Fatal(err)
	}
	var last client.Event
	for e := range events { // queued, loading, working, done as they happen
		last = e
	}
	fmt.Println(last.State)
	// Output: done
}

func ExampleVerifyWebhook() {
	secret := "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	body := []byte(`{"job_id":"01JABCDEFGHJKMNPQRSTVWXYZ0","state":"done"}`)

	// What foreman sends (normally read from the request in your handler).
	ts := strconv.FormatInt(time.Now().Unix(), 10)
	key, _ := base64.StdEncoding.DecodeString("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte("msg_1." + ts + "." + string(body)))
	h := http.Header{}
	h.Set("webhook-id", "msg_1")
	h.Set("webhook-timestamp", ts)
	h.Set("webhook-signature", "v1,"+base64.StdEncoding.EncodeToString(mac.Sum(nil)))

	fmt.Println(client.VerifyWebhook(secret, h, body, 5*time.Minute))
	fmt.Println(client.VerifyWebhook(secret, h, []byte(`{"state":"forged"}`), 5*time.Minute))
	// Output:
	// <nil>
	// webhook: no matching signature
}

func ExampleClient_Queue() {
	f := exampleForeman()
	defer f.Close()
	c, err := client.New(f.URL)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	q, err := c.Queue(ctx, 10) // the first 10 waiting jobs, in the order foreman will run them
	if err != nil {
		log.Fatal(err)
	}
	for _, j := range q.Queued {
		fmt.Println(j.QueuePosition, j.JobID, j.Model, "starts about", j.ETA.Format(time.Kitchen))
	}
	fmt.Println(q.Total, "waiting")
	// Output: 0 waiting
}

func ExampleWithOnQueued() {
	f := exampleForeman()
	defer f.Close()
	queued := make(chan string, 1)
	c, err := client.New(f.URL, client.WithOnQueued(func(jobID string) { queued <- jobID }))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	_, err = c.Chat(context.Background(), client.ChatRequest{
		Model:    "tiny-a",
		Messages: []client.Message{{Role: "user", Content: "Hello"}},
	}, nil)
	if err != nil {
		log.Fatal(err)
	}
	// While the job waited, Job(ctx, id) showed its QueuePosition and ETA.
	j, err := c.Job(context.Background(), <-queued)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(j.Model, j.Kind)
	// Output:
	// tiny-a chat
}

func ExampleWithAnswerTimeout() {
	f := exampleForeman()
	defer f.Close()
	// The job may wait in the queue for hours; a foreman that takes a read of it and
	// answers nothing for 30 s (stopped, its store hung) ends the wait.
	c, err := client.New(f.URL, client.WithAnswerTimeout(30*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	res, err := c.Submit(context.Background(), client.SubmitRequest{
		Chat: &client.ChatRequest{Model: "tiny-a", Messages: []client.Message{{Role: "user", Content: "Hello"}}},
	})
	var na *client.NoAnswerError
	switch {
	case errors.As(err, &na):
		log.Fatalf("foreman stopped answering; job %s goes on: follow it later with Wait", na.JobID)
	case err != nil:
		log.Fatal(err)
	}
	fmt.Println(res.Job.State)
	// Output: done
}
