// Where the page finds the API unless its user sets an API URL (kept in local storage).
// "./": the page is served by the API's own origin (the local stack). Hosting web/ elsewhere,
// replace this file with your stack's ApiUrl output (README, "Try it in a browser"); never put
// an API key here.
window.IMAGEGEN_CONFIG = { apiUrl: "./" };
