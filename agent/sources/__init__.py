"""Where readings come from: field devices polled or listened to."""
