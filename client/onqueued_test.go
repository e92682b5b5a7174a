package client_test

import (
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
)

// WithOnQueued hands over a chat's job id while the job still waits (before any answer),
// so its place in the queue can be read with Job.
func TestOnQueuedGivesTheJobIDBeforeTheAnswer(t *testing.T) {
	t.Parallel()
	f := startForeman(t, foremanConfig{})
	release := f.Fake.Hold("tiny-a")
	defer release()
	ids := make(chan string, 1)
	c := newClient(t, f.URL, client.WithOnQueued(func(id string) { ids <- id }))
	ctx := testCtx(t)

	done := make(chan error, 1)
	go func() {
		_, err := c.Chat(ctx, client.ChatRequest{Model: "tiny-a", Messages: []client.Message{{Role: "user", Content: "hi"}}}, nil)
		done <- err
	}()
	var id string
	select {
	case id = <-ids:
	case err := <-done:
		t.Fatalf("the chat ended (%v) before its job id came", err)
	case <-ctx.Done():
		t.Fatal("no job id while the job is held")
	}
	j, err := c.Job(ctx, id)
	if err != nil || j.Model != "tiny-a" || j.State.Terminal() {
		t.Fatalf("Job(%s) = %+v, %v: want the held tiny-a job", id, j, err)
	}
	release()
	if err := <-done; err != nil {
		t.Fatalf("Chat: %v", err)
	}
}
