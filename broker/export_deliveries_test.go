package broker

// MaxDeliveryLogBytes is maxDeliveryLogBytes, for the delivery log's bound test.
const MaxDeliveryLogBytes = maxDeliveryLogBytes
