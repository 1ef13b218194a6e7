"""The studio page's static files (served by `photo_eraser.api.routes.studio`)."""
