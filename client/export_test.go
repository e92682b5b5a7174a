package client

import "time"

// SetOnWebhookListen lets tests see the URL of Submit's webhook receiver.
func SetOnWebhookListen(c *Client, f func(url string)) {
	c.onWebhookListen = func(url, _ string) { f(url) }
}

// SetOnWebhookBound lets tests see the advertised URL and the listening address of
// Submit's webhook receiver.
func SetOnWebhookBound(c *Client, f func(url, listenAddr string)) { c.onWebhookListen = f }

// SetNATSSubmitTimeout shortens the wait for a NATS submit's reply.
func SetNATSSubmitTimeout(c *Client, d time.Duration) { c.natsSubmitTimeout = d }

// SetStatePendingLimit caps the messages buffered per NATS state subscription.
func SetStatePendingLimit(c *Client, n int) { c.statePendingLimit = n }

// SetNATSCheckEvery shortens how often Watch("") over NATS looks for a closed connection.
func SetNATSCheckEvery(c *Client, d time.Duration) { c.natsCheckEvery = d }

// The bounds on a server's answers.
const (
	MaxJobAnswer    = maxJobAnswer
	MaxListBase     = maxListBase
	MaxListEntry    = maxListEntry
	MaxQueueEntry   = maxQueueEntry
	MaxTargetAnswer = maxTargetAnswer
	MaxSmallAnswer  = maxSmallAnswer
	MaxStreamLine   = maxStreamLine
	MaxStream       = maxStream
)

// SetWebhookReceiverBounds shortens how long Submit's webhook receiver waits for a
// request's body and for a kept-alive connection's next request.
func SetWebhookReceiverBounds(c *Client, body, idle time.Duration) {
	c.webhookBodyWait, c.webhookIdle = body, idle
}

// LingeringReceivers is the count of Submit's retired webhook receivers still open.
func LingeringReceivers(c *Client) int {
	c.lingerMu.Lock()
	defer c.lingerMu.Unlock()
	return len(c.lingering)
}
