//! `joule energy evaluate-batch`: the batch scheduler on a simulated clock against a price
//! trace (not built yet).
