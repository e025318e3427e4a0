// Entry: start the one controller.
import { App } from './app.js';

new App(document).start();
