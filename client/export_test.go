package client

// SetOnWebhookListen lets tests see the URL of Submit's webhook receiver.
func SetOnWebhookListen(c *Client, f func(url string)) { c.onWebhookListen = f }
