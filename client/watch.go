package client

import (
	"context"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// Watch follows a job's state changes: the channel gets the job's current state first,
// then every change, and closes after a terminal state or when ctx ends. It uses NATS
// when the client has it, else polling. An unknown job is an error at once. Should a
// later read of the job fail for good (an error answer other than 5xx or 429, an answer
// that is no job record), the channel closes before a terminal state; Job tells why.
//
// Over NATS no event is dropped by the client, terminal ones included: a reader that falls
// behind slows delivery down (back-pressure), and nats.go buffers the events meanwhile.
//
// With id "" Watch follows every job until ctx ends: all state events over NATS, or, when
// polling, the changes among the newest 100 jobs. Should a reader fall so far behind that
// nats.go's buffer (by default 512Ki messages or 64 MiB) overflows, the events it drops
// are reported as a lost event (Event.Lost > 0, without JobID) ahead of the next event;
// re-read the jobs with Jobs then. A single-job watch reads its job again instead.
func (c *Client) Watch(ctx context.Context, id string) (<-chan Event, error) {
	if id == "" {
		return c.watchAll(ctx)
	}
	f, err := c.follow(ctx, id, nil, false, nil)
	if err != nil {
		return nil, err
	}
	ch := make(chan Event)
	go func() {
		defer close(ch)
		defer f.stop()
		_, _ = f.run(ctx, func(e Event) {
			select {
			case ch <- e:
			case <-ctx.Done():
			}
		}, nil)
	}()
	return ch, nil
}

func (c *Client) watchAll(ctx context.Context) (<-chan Event, error) {
	out := make(chan Event)
	if c.natsUp() && !c.pollingOnly {
		events, unsub, err := c.subscribe(broker.StateWildcard)
		if err != nil {
			return nil, err
		}
		go func() {
			defer close(out)
			defer unsub()
			for {
				select {
				case <-ctx.Done():
					return
				case e := <-events:
					select {
					case out <- e:
					case <-ctx.Done():
						return
					}
				}
			}
		}()
		return out, nil
	}
	first, err := c.Jobs(ctx, JobFilter{Limit: 100})
	if err != nil {
		return nil, err
	}
	go func() {
		defer close(out)
		last := map[string]Event{}
		list := first
		t := time.NewTicker(c.pollInterval)
		defer t.Stop()
		for {
			// Oldest first, so events come in the order they happened.
			for i := len(list.Jobs) - 1; i >= 0; i-- {
				e := eventOfJob(&list.Jobs[i])
				if prev, ok := last[e.JobID]; ok && prev.same(e) {
					continue
				}
				last[e.JobID] = e
				select {
				case out <- e:
				case <-ctx.Done():
					return
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if l, err := c.Jobs(ctx, JobFilter{Limit: 100}); err == nil {
				list = l
			}
		}
	}()
	return out, nil
}
