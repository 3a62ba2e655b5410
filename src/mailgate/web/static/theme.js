// Light or dark: the page follows the system (prefers-color-scheme) until the reader
// chooses in its Theme switch, a choice kept in this browser (localStorage).
// Loaded in the head without defer, so the chosen colours are there before anything is
// drawn; the switch is wired once the page is parsed.
"use strict";

const THEME_KEY = "mailgate-theme";

function applyTheme(choice) {
  if (choice === "light" || choice === "dark") document.documentElement.dataset.theme = choice;
  else delete document.documentElement.dataset.theme;
}

function storedTheme() {
  try {
    return localStorage.getItem(THEME_KEY) || "";
  } catch {
    return ""; // storage refused: follow the system
  }
}

applyTheme(storedTheme());

document.addEventListener("DOMContentLoaded", () => {
  const choice = document.getElementById("theme");
  choice.value = document.documentElement.dataset.theme || "";
  choice.addEventListener("change", () => {
    applyTheme(choice.value);
    try {
      if (choice.value) localStorage.setItem(THEME_KEY, choice.value);
      else localStorage.removeItem(THEME_KEY);
    } catch {
      // kept for this page only
    }
  });
});
